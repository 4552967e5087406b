"""A host manager with a VM that runs qemu-ga: the real qemu-ga, in its sandbox, over a socket.

Everything between the host halves and qemu-ga is the real code: the
manager and its session, the qemu-ga link and its translations, the
connection and the codec, and Debian's qemu-ga 7.2 (tests/support/qga_sandbox.py:
it runs with every state-changing RPC blocked, so Shutdown, Time
Synchronization, VSS and VM Session show as disabled in the guest, with
qemu-ga's block list as the reason). The services those RPCs carry are
tested against a real QEMU guest (tests/e2e/test_e2e_qemu_ga.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import pytest
from support.pair import eventually

from vmis.errors import RemoteServiceError, ServiceUnavailable
from vmis.host.manager import HostManager
from vmis.host.store import Store
from vmis.services.catalog import CATALOG, by_key
from vmis.services.fcopy.host import FcopyHost
from vmis.services.kvp.host import KvpHost
from vmis.services.shutdown import PowerAction
from vmis.services.shutdown.host import ShutdownHost
from vmis.services.status import OperationalStatus
from vmis.services.timesync.host import TimeSyncHost

HB, GSI = by_key("heartbeat"), by_key("fcopy")
OK = OperationalStatus.OK


@pytest.fixture
async def qga_vm(tmp_path, qga_sandbox):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}"))
    await manager.start()
    manager.add_vm("QgaVM", qga_sandbox.channel, guest_agent="qemu-ga",
                   heartbeat_interval_ms=300)
    session = manager.session("QgaVM")
    assert await session.wait_connected(20), session.last_error
    yield manager, session, qga_sandbox
    await manager.close()


async def test_the_table_of_a_qemu_ga_guest_names_what_qemu_ga_blocks(qga_vm):
    manager, session, _ = qga_vm
    await eventually(lambda: session.status(HB).primary is OK, timeout=10)
    # the rows Get-VMIntegrationService prints, as the session computes them
    rows = {r.name: r for r in (session.status(spec) for spec in CATALOG.host_services)}
    assert [row["Name"] for row in await manager.services(["QgaVM"], None)] == list(rows)
    assert [(n, r.enabled, r.primary, r.secondary) for n, r in rows.items()] == [
        ("Guest Service Interface", False, OK, None),
        ("Heartbeat", True, OK, OK),
        ("Key-Value Pair Exchange", True, OK, None),
        ("Shutdown", True, OperationalStatus.ERROR, None),
        ("Time Synchronization", True, OperationalStatus.ERROR, None),
        ("VSS", True, OperationalStatus.ERROR, None),
    ]
    # rule 6: disabled in the guest, and the reason is qemu-ga's block list
    assert "blocks guest-shutdown" in rows["Shutdown"].reason
    assert "blocks guest-set-time" in rows["Time Synchronization"].reason
    assert "guest-fsfreeze-freeze" in rows["VSS"].reason and "block-rpcs" in rows["VSS"].reason
    [vm] = await manager.get_vms(["QgaVM"])
    assert vm["IntegrationServicesVersion"].startswith("qemu-ga 7.")
    assert (vm["GuestAgent"], vm["IntegrationServicesState"]) == ("qemu-ga", "")
    assert vm["Heartbeat"] == "OkApplicationsHealthy" and vm["State"] == "Running"
    info = manager.vm_info(session)
    assert info["GuestAgent"] == "qemu-ga" and 0 < info["BeatLatencyMs"] < 5000


async def test_services_qemu_ga_blocks_say_so_when_used(qga_vm):
    manager, _session, _ = qga_vm
    [stopped] = await manager.service(ShutdownHost).power_vms(
        ["QgaVM"], PowerAction.POWEROFF, force=False, reason="test", timeout=10)
    assert "blocks guest-shutdown" in stopped["Error"]
    row = manager.service(TimeSyncHost).rows(["QgaVM"])[0]
    assert row["State"] == "Stopped" and "blocks guest-set-time" in row["Error"]
    # an enable of a blocked service is refused with the reason (rule 6)
    [change] = await manager.set_enabled(["QgaVM"], ["VSS"], True)
    assert "blocks guest-fsfreeze" in change["Error"]


async def test_heartbeat_is_guest_ping_and_lost_communication_when_qemu_ga_stops(qga_vm):
    _manager, session, sandbox = qga_vm
    await eventually(lambda: session.status(HB).primary is OK, timeout=10)
    os.kill(sandbox.pid, signal.SIGSTOP)  # qemu-ga hangs; its socket stays open
    try:
        await eventually(lambda: session.status(HB).primary
                         is OperationalStatus.LOST_COMMUNICATION, timeout=10)
        assert session.status(GSI).primary is OK  # disabled on the host: OK, as ever
    finally:
        os.kill(sandbox.pid, signal.SIGCONT)
    await eventually(lambda: session.status(HB).primary is OK, timeout=30)


async def test_disabling_heartbeat_stops_the_pings(qga_vm):
    manager, session, _sandbox = qga_vm
    link = session.link
    await eventually(lambda: link.hello.agent.get("beat_latency_ms") is not None)
    heartbeat = link._translators[HB.id]
    await manager.set_enabled(["QgaVM"], ["Heartbeat"], False)
    seq = heartbeat.seq
    await asyncio.sleep(1.0)
    assert heartbeat.seq == seq  # a disabled service is never used
    await manager.set_enabled(["QgaVM"], ["Heartbeat"], True)
    await eventually(lambda: heartbeat.seq > seq, timeout=5)


async def test_kvp_shows_the_guests_facts_and_refuses_host_writes(qga_vm):
    manager, session, _ = qga_vm
    kvp = manager.service(KvpHost)
    rows = await eventually(lambda: {r["Key"]: r["Value"] for r in kvp.rows(["QgaVM"], "Auto")})
    osinfo = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().split("\n")
                  if "=" in line)
    assert rows["OSName"] == osinfo["NAME"].strip('"')
    assert rows["OSMajorVersion"] == osinfo["VERSION_ID"].strip('"')
    assert rows["OSBuildNumber"] == os.uname().release
    assert rows["ProcessorArchitecture"] == os.uname().machine
    assert rows["IntegrationServicesVersion"].startswith("qemu-ga 7.")
    assert rows["FullyQualifiedDomainName"] == os.uname().nodename
    assert "TimeZone" in rows and "FileSystems" in rows
    [result] = await kvp.set(["QgaVM"], "role", "db")
    assert not result["Delivered"] and "keeps no key-value pools" in result["Error"]
    assert [r for r in kvp.rows(["QgaVM"], "External")] == []  # not saved for later either
    assert "only the guest's facts" in session.guest["kvp"].limit


async def test_copy_vm_file_both_ways_through_qemu_ga(qga_vm, tmp_path):
    manager, _session, sandbox = qga_vm
    fcopy = manager.service(FcopyHost)
    with pytest.raises(ServiceUnavailable, match="disabled on the host"):
        await fcopy.copy_vm_file("QgaVM", str(tmp_path / "x"), "/tmp/x", "Host")
    await manager.set_enabled(["QgaVM"], ["Guest Service Interface"], True)
    guest_dir = sandbox.dir / "files"
    guest_dir.mkdir()
    # one PUT and OPEN_READ inline; then OPEN_WRITE, WRITEs, COMMIT and READs, CLOSE
    for size in (5, 5 * 1024 * 1024 + 17):
        source = tmp_path / f"in-{size}.bin"
        source.write_bytes(os.urandom(size))
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        into = await fcopy.copy_vm_file("QgaVM", str(source), f"{guest_dir}/", "Host")
        assert into["Destination"] == f"{guest_dir}/{source.name}"
        assert (into["Bytes"], into["Sha256"]) == (size, digest)
        assert (guest_dir / source.name).read_bytes() == source.read_bytes()
        back = tmp_path / f"back-{size}.bin"
        out = await fcopy.copy_vm_file("QgaVM", f"{guest_dir}/{source.name}", str(back),
                                       "Guest")
        assert out["Sha256"] == digest and back.read_bytes() == source.read_bytes()
    # Copy-VMFile's rules hold: an existing file needs -Force
    with pytest.raises(RemoteServiceError, match="-Force overwrites it"):
        await fcopy.copy_vm_file("QgaVM", str(source), f"{guest_dir}/{source.name}", "Host")
    smaller = tmp_path / "smaller.bin"
    smaller.write_bytes(b"new")
    await fcopy.copy_vm_file("QgaVM", str(smaller), f"{guest_dir}/{source.name}", "Host",
                             force=True)
    assert (guest_dir / source.name).read_bytes() == b"new"
    # what needs guest-exec says so
    with pytest.raises(RemoteServiceError, match="without guest-exec"):
        await fcopy.copy_vm_file("QgaVM", str(guest_dir), str(tmp_path / "tree"), "Guest",
                                 recurse=True)
    with pytest.raises(RemoteServiceError, match="without guest-exec"):
        await fcopy.copy_vm_file("QgaVM", str(smaller), f"{guest_dir}/new/dir/f", "Host",
                                 create_full_path=True)


async def test_an_interrupted_copy_out_leaves_no_destination_and_starts_over(qga_vm, tmp_path):
    # Without guest-exec a guest file's times are unknown, so a copy cannot
    # resume (docs/guest-links.md §4); it is never left half-written either.
    manager, _, sandbox = qga_vm
    await manager.set_enabled(["QgaVM"], ["Guest Service Interface"], True)
    fcopy = manager.service(FcopyHost)
    data = os.urandom(24 * 1024 * 1024)
    (sandbox.dir / "big.bin").write_bytes(data)
    target = tmp_path / "big.bin"
    first = asyncio.ensure_future(fcopy.copy_vm_file(
        "QgaVM", f"{sandbox.dir}/big.bin", str(target), "Guest",
        progress=lambda p: p.bytes_done >= 12 * 1024 * 1024 and first.cancel()))
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not target.exists()  # a partial file beside it, never the destination
    again = await fcopy.copy_vm_file("QgaVM", f"{sandbox.dir}/big.bin", str(target), "Guest")
    assert again["BytesResumed"] == 0 and again["BytesSent"] == len(data)
    assert target.read_bytes() == data
    assert again["Sha256"] == hashlib.sha256(data).hexdigest()
