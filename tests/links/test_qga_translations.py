"""The qemu-ga translations of what the sandboxed qemu-ga may not do: a scripted qemu-ga.

Freezes, clock steps, shutdowns and guest programs are blocked in the
sandbox (they would act on this machine); the real qemu-ga does them in
tests/e2e/test_e2e_qemu_ga.py. Here a scripted qemu-ga
(support/qga_peer.py) answers as qemu-ga does, and also as it does when it
misbehaves: a freeze that hangs past its window, a snapshot step that hangs
while the guest is frozen, a guest-shutdown with no answer.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from support.pair import eventually
from support.qga_peer import QgaError, QgaPeer, guest_info

from vmis.host.manager import HostManager
from vmis.host.store import Store
from vmis.links.qemu_ga import kvp
from vmis.services.kvp.host import KvpHost
from vmis.services.shutdown import PowerAction
from vmis.services.shutdown.host import ShutdownHost
from vmis.services.timesync.host import TimeSyncHost
from vmis.services.vmsession.host import Exit, Output, RemoteCommand
from vmis.services.vss.checkpoint import SnapshotType
from vmis.services.vss.host import VssHost

INHIBITED = ('{"type":"a(ssssuu)","data":[[["shutdown","backup","nightly run","block",0,'
             '4242]]]}')


class Guest:
    """The scripted guest's state: its clock, its freeze, its programs."""

    def __init__(self) -> None:
        self.offset_ns = 3600 * 10**9  # an hour ahead
        self.frozen = False
        self.freeze_delay = 0.0
        self.no_dbus = False
        self.programs: dict[str, dict[str, Any]] = {}
        self.started: list[list[str]] = []
        self._next_pid = 100
        #: guest-network-get-interfaces: the loopback only until the network is up
        self.interfaces: list[dict[str, Any]] = [
            {"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1",
                                             "prefix": 8}]}]

    def handlers(self) -> dict[str, Any]:
        return {
            "guest-info": lambda a: guest_info(),
            "guest-ping": lambda a: {},
            "guest-get-osinfo": lambda a: {"id": "debian", "name": "Debian GNU/Linux",
                                           "version-id": "12", "kernel-release": "6.1.0-1",
                                           "machine": "x86_64"},
            "guest-file-open": self._open,
            "guest-file-read": lambda a: {"count": 37, "eof": True, "buf-b64": base64.b64encode(
                b"3f6c1e4e-0000-4000-8000-000000000001\n").decode()},
            "guest-file-close": lambda a: {},
            "guest-get-time": lambda a: time.time_ns() + self.offset_ns,
            "guest-set-time": self._set_time,
            "guest-fsfreeze-status": lambda a: "frozen" if self.frozen else "thawed",
            "guest-fsfreeze-freeze": self._freeze,
            "guest-fsfreeze-thaw": self._thaw,
            "guest-network-get-interfaces": lambda a: self.interfaces,
            "guest-get-fsinfo": lambda a: [{"mountpoint": "/", "type": "ext4"},
                                           {"mountpoint": "/var", "type": "ext4"}],
            "guest-shutdown": self._shutdown,
            "guest-exec": self._exec,
            "guest-exec-status": self._status,
        }

    def _shutdown(self, args: dict[str, Any]) -> None:
        if self.no_dbus:
            # qemu-ga 7.2's "shutdown -P +0" in a guest without D-Bus (systemd 252)
            raise QgaError("child process has failed to shutdown")

    def _open(self, args: dict[str, Any]) -> int:
        if args["path"] != "/proc/sys/kernel/random/boot_id":
            raise QgaError(f"failed to open file '{args['path']}' (mode: 'r'): "
                           "No such file or directory")
        return 1000

    def _set_time(self, args: dict[str, Any]) -> None:
        self.offset_ns = args["time"] - time.time_ns()  # the clock reads the value now
        # Debian 12's qemu-ga, in a guest without util-linux-extra, says so after the step
        raise QgaError("hwclock failed to set hardware clock to system time")

    async def _freeze(self, args: dict[str, Any]) -> int:
        await asyncio.sleep(self.freeze_delay)
        self.frozen = True
        return 2

    def _thaw(self, args: dict[str, Any]) -> int:
        count = 2 if self.frozen else 0
        self.frozen = False
        return count

    def _exec(self, args: dict[str, Any]) -> dict[str, int]:
        argv = [args["path"], *args.get("arg", [])]
        self.started.append(argv)
        self._next_pid += 1
        self.programs[str(self._next_pid)] = {"argv": argv, "input": args.get("input-data"),
                                              "polls": 0}
        return {"pid": self._next_pid}

    def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        program = self.programs[str(args["pid"])]
        program["polls"] += 1
        argv = program["argv"]
        if argv[0] == "env":
            argv = argv[argv.index("--") + 1:]
        if argv[0] == "busctl":
            return {"exited": True, "exitcode": 0,
                    "out-data": base64.b64encode(INHIBITED.encode()).decode()}
        if argv[0] == "sh" and program["polls"] < 3:
            return {"exited": False}
        if argv[0] == "cat":
            data = base64.b64decode(program["input"] or "")
            return {"exited": True, "exitcode": 0, "out-data": base64.b64encode(data).decode()}
        if argv[0] == "big":
            return {"exited": True, "exitcode": 3, "out-truncated": True,
                    "out-data": base64.b64encode(b"x" * 300_000).decode(),
                    "err-data": base64.b64encode(b"oops\n").decode()}
        return {"exited": True, "exitcode": 0}


@pytest.fixture
async def scripted(tmp_path, short_tmp):
    guest = Guest()
    peer = QgaPeer(short_tmp / "qga.sock", guest.handlers())
    await peer.start()
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}"))
    await manager.start()
    manager.add_vm("QgaVM", f"unix:{peer.path}", guest_agent="qemu-ga",
                   heartbeat_interval_ms=300)
    session = manager.session("QgaVM")
    assert await session.wait_connected(20), session.last_error
    yield manager, session, guest, peer
    await manager.close()
    await peer.close()


async def test_a_production_checkpoint_freezes_snapshots_and_thaws(scripted, tmp_path):
    manager, _, guest, peer = scripted
    mark = tmp_path / "snap"
    report = await manager.service(VssHost).checkpoint(
        "QgaVM", snapshot_type=SnapshotType.PRODUCTION_ONLY,
        command=f"test \"$VMIS_CONSISTENCY\" = application && touch {mark}")
    assert report.status == "Completed", report.error
    assert (report.taken, report.consistency) == ("Production", "application")
    assert report.frozen == ["/var", "/"] and mark.exists() and not guest.frozen
    assert [s.step for s in report.steps] == ["freeze", "snapshot", "thaw"]
    assert [c for c, _ in peer.received if "fsfreeze" in c][-3:] == [
        "guest-fsfreeze-status", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]


async def test_a_freeze_that_outlasts_its_window_is_thawed_and_never_silently_used(scripted):
    manager, session, guest, _peer = scripted
    guest.freeze_delay = 2.0  # qemu-ga hangs in FIFREEZE longer than the window
    report = await manager.service(VssHost).checkpoint(
        "QgaVM", snapshot_type=SnapshotType.PRODUCTION, command="true", freeze_timeout=1.0)
    # the host's watchdog sent the thaw behind the hung freeze; qemu-ga ran it right after
    assert not guest.frozen
    assert report.status == "Completed" and report.taken == "Standard"
    assert report.consistency == "crash"
    assert any("longer than its 1 s window" in w and "crash-consistent" in w
               for w in report.warnings), report.warnings
    # a slow freeze held the pings up, and still the guest did not count as gone
    assert session.connected


async def test_a_snapshot_step_that_hangs_while_frozen_is_cut_off_and_the_guest_thawed(scripted):
    manager, _, guest, _ = scripted
    started = time.monotonic()
    report = await manager.service(VssHost).checkpoint(
        "QgaVM", snapshot_type=SnapshotType.PRODUCTION_ONLY, command="sleep 30",
        freeze_timeout=2.0)
    assert report.status == "Failed" and "did not finish within" in report.error
    assert not guest.frozen and time.monotonic() - started < 15


async def test_time_sync_steps_a_clock_an_hour_ahead_with_guest_set_time(scripted):
    manager, session, guest, peer = scripted
    timesync = manager.service(TimeSyncHost)
    row = await eventually(lambda: (r := timesync.rows(["QgaVM"])[0])["Syncs"] and r, timeout=15)
    assert row["State"] == "Stepped" and row["Action"] == "step", row
    assert abs(row["OffsetNs"] / 1e9 - 3600) < 5
    # the step's target is the host's time (plus half a round trip), not the sample's
    [step] = peer.commands("guest-set-time")
    assert abs(step["time"] - time.time_ns()) < 5e9
    assert "RTC was not" in row["Note"]  # qemu-ga's hwclock failed after the clock was set
    assert abs(guest.offset_ns) < 1e9  # stepped to the host's time
    guest.offset_ns = 50_000_000  # 50 ms ahead: a vmis guest would slew that
    session.part(TimeSyncHost).monitor.sync_pending = False  # periodic samples from here
    timesync.set_interval(["QgaVM"], 200)
    row = await eventually(lambda: (r := timesync.rows(["QgaVM"])[0])["State"] == "Unslewed"
                           and r, timeout=15)
    assert "cannot slew" in row["Note"] and len(peer.commands("guest-set-time")) == 1


@pytest.fixture
def quick_kvp_refresh(monkeypatch):
    """Facts read every 0.2 s instead of every 10 (set before the link opens)."""
    monkeypatch.setattr(kvp, "REFRESH", 0.2)


async def test_the_auto_pool_follows_the_guests_facts_after_connect(quick_kvp_refresh, scripted):
    manager, _session, guest, peer = scripted
    pool = manager.service(KvpHost)

    def auto() -> dict[str, str]:
        return {r["Key"]: r["Value"] for r in pool.rows(["QgaVM"], "Auto")}

    # read at connect: qemu-ga starts before the guest's network, which has no address yet
    assert (await eventually(auto))["NetworkAddressIPv4"] == ""
    reads = len(peer.commands("guest-network-get-interfaces"))
    guest.interfaces.append({"name": "ens3", "ip-addresses": [
        {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24},
        {"ip-address-type": "ipv6", "ip-address": "fec0::5054:ff:fe12:3456", "prefix": 64}]})
    rows = await eventually(lambda: (r := auto())["NetworkAddressIPv4"] and r, timeout=10)
    assert (rows["NetworkAddressIPv4"], rows["NetworkAddressIPv6"]) == (
        "10.0.2.15", "fec0::5054:ff:fe12:3456")
    assert rows["OSName"] == "Debian GNU/Linux"  # the other facts pushed again with them
    assert len(peer.commands("guest-network-get-interfaces")) > reads
    guest.interfaces.pop()  # the address went away (DHCP lease lost, link down)
    await eventually(lambda: auto()["NetworkAddressIPv4"] == "", timeout=10)


async def test_stop_vm_through_guest_shutdown_which_answers_nothing(scripted):
    manager, _session, _guest, peer = scripted
    shutdown = manager.service(ShutdownHost)
    # without -Force: logind holds a block inhibitor in the guest (asked through guest-exec)
    [refused] = await shutdown.power_vms(["QgaVM"], PowerAction.POWEROFF, force=False,
                                         reason="test", timeout=10)
    assert "blocked by backup (pid 4242): nightly run" in refused["Error"]
    assert not peer.commands("guest-shutdown")
    asyncio.get_running_loop().call_later(0.5, peer.drop_clients)  # QEMU exits
    [stopped] = await shutdown.power_vms(["QgaVM"], PowerAction.POWEROFF, force=True,
                                         reason="test", timeout=10)
    assert stopped["Error"] is None and stopped["State"] == "Off", stopped
    assert peer.commands("guest-shutdown") == [{"mode": "powerdown"}]


async def test_a_guest_shutdown_that_fails_without_dbus_is_done_by_systemctl(scripted):
    manager, _, guest, peer = scripted
    guest.no_dbus = True
    asyncio.get_running_loop().call_later(1.0, peer.drop_clients)  # QEMU exits
    [stopped] = await manager.service(ShutdownHost).power_vms(
        ["QgaVM"], PowerAction.POWEROFF, force=True, reason="test", timeout=10)
    assert stopped["Error"] is None, stopped
    assert guest.started[-1] == ["systemctl", "poweroff"]


async def test_invoke_command_output_after_exit_with_qemu_gas_cap_said(scripted):
    _manager, session, _guest, _ = scripted
    command = await RemoteCommand.start(session, ["big"], window=64 * 1024)
    out, err = bytearray(), bytearray()
    while True:
        event = await asyncio.wait_for(command.next_event(), 10)
        if isinstance(event, Output):
            (out if event.stream == 1 else err).extend(event.data)
            command.ack(len(event.data))  # the window holds the rest back until now
        elif isinstance(event, Exit):
            break
    assert bytes(out) == b"x" * 300_000 and event.code == 3
    assert b"oops\n" in err and b"kept only the first 16 MiB of the command's stdout" in err


async def test_invoke_command_stdin_is_given_when_the_command_starts(scripted):
    _manager, session, guest, _ = scripted
    command = await RemoteCommand.start(session, ["cat"], stdin=True, cwd="/srv",
                                        env={"LANG": "C"})
    await command.write(b"hello ")
    await command.write(b"world")
    command.close_input()
    out = bytearray()
    while not isinstance(event := await asyncio.wait_for(command.next_event(), 10), Exit):
        if isinstance(event, Output):
            out.extend(event.data)
            command.ack(len(event.data))
    assert bytes(out) == b"hello world" and event.code == 0
    assert guest.started[-1] == ["env", "--chdir=/srv", "LANG=C", "--", "cat"]
