"""Stop-VM and Restart-VM through the real channel, with a recording power switch in the guest."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support.pair import eventually, host_guest_pair

from vmis.errors import VmisError
from vmis.guest.adapters import make_adapters
from vmis.services.catalog import StartupType, by_key

SHUTDOWN = by_key("shutdown")


class RecordingPower:
    """A guest power switch that records, and ends or restarts the in-process agent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.blocked: list[str] = []
        self.block_seconds = 0.0
        self.fail = ""
        self.pair = None

    def poweroff(self, reason: str) -> None:
        self.calls.append(("poweroff", reason))
        if self.fail:
            raise VmisError(self.fail)
        self.pair.agent.shutdown()  # the VM goes away: its agent stops, the channel closes

    def reboot(self, reason: str) -> None:
        self.calls.append(("reboot", reason))
        pair = self.pair
        adapters = dict(pair.agent.ctx.adapters)
        self._restart = asyncio.ensure_future(pair.restart_agent(adapters=adapters))

    def blockers(self) -> list[str]:
        time.sleep(self.block_seconds)
        return list(self.blocked)


def pair_with(tmp: Path, power: RecordingPower):
    adapters = make_adapters("fake", tmp / "guest")
    adapters["power"] = power
    return host_guest_pair(tmp, adapters=adapters)


async def power(pair, verb: str, **body) -> dict:
    body.setdefault("vms", ["DemoVM"])
    body.setdefault("timeout", 10)
    response = await pair.api.post(f"/v1/power/{verb}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    [result] = response.json()
    return result


async def test_stop_vm_runs_the_guest_power_off_and_waits_until_it_is_gone(short_tmp):
    recorder = RecordingPower()
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        result = await power(pair, "stop", reason="Stop-VM by alice on hv01")
        assert result["Error"] is None, result
        assert result["State"] == "Off" and result["Action"] == "Stop"
        assert 0 < result["Seconds"] < 10
        assert recorder.calls == [("poweroff", "Stop-VM by alice on hv01")]
        assert not pair.session.connected


async def test_shutdown_disabled_on_the_host_fails_clearly_and_sends_nothing(short_tmp):
    recorder = RecordingPower()
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        await pair.manager.set_enabled(["DemoVM"], ["Shutdown"], False)
        result = await power(pair, "stop")
        assert result["Error"] == (
            'DemoVM: the Shutdown integration service is disabled on the host '
            '(Enable-VMIntegrationService -VMName DemoVM -Name "Shutdown")')
        assert result["ErrorType"] == "ServiceUnavailable"
        assert recorder.calls == [] and pair.session.connected


async def test_shutdown_disabled_in_the_guest_fails_clearly(short_tmp):
    recorder = RecordingPower()
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        await pair.agent.manager.guest_set_startup(SHUTDOWN, StartupType.DISABLED)
        await eventually(lambda: pair.session.guest["shutdown"].startup == "disabled")
        result = await power(pair, "stop")
        assert result["Error"] == ("DemoVM: Shutdown is not running: it is disabled in the "
                                   "guest (StartupType Disabled)")
        assert recorder.calls == []


async def test_a_guest_that_does_not_answer_fails_clearly(short_tmp):
    recorder = RecordingPower()
    recorder.block_seconds = 3.0  # the guest is stuck before it can answer
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        result = await power(pair, "stop", timeout=1)
        assert result["Error"] == ("DemoVM: the guest's Shutdown service did not answer "
                                   "within 1 s")


async def test_a_blocked_guest_refuses_without_force_and_goes_with_it(short_tmp):
    recorder = RecordingPower()
    recorder.blocked = ["backup (pid 42): nightly backup running"]
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        refused = await power(pair, "stop")
        assert refused["ErrorType"] == "StateError"
        assert refused["Error"] == (
            "DemoVM: the guest refuses to shut down: blocked by backup (pid 42): nightly "
            "backup running (use -Force to shut down anyway)")
        assert recorder.calls == [] and pair.session.connected
        forced = await power(pair, "stop", force=True)
        assert forced["State"] == "Off" and forced["Force"] is True
        assert [c[0] for c in recorder.calls] == ["poweroff"]


async def test_a_failing_power_command_is_reported_at_once(short_tmp):
    recorder = RecordingPower()
    recorder.fail = "cannot run systemctl poweroff: No such file or directory"
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        started = time.monotonic()
        result = await power(pair, "stop", timeout=30)
        assert result["Error"] == ("DemoVM: the guest accepted but its power command failed: "
                                   "cannot run systemctl poweroff: No such file or directory")
        assert time.monotonic() - started < 10  # not the 30 s timeout
        # the guest is still there and takes the next request
        recorder.fail = ""
        assert (await power(pair, "stop"))["State"] == "Off"


async def test_restart_vm_waits_for_the_guest_to_come_back(short_tmp):
    recorder = RecordingPower()
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        boot = pair.session.agent["boot_id"]
        result = await power(pair, "restart", reason="patch night", timeout=20)
        assert result["Error"] is None, result
        assert result["State"] == "Running" and result["Action"] == "Restart"
        assert result["DownAfter"] <= result["Seconds"]
        assert recorder.calls == [("reboot", "patch night")]
        assert pair.session.connected and pair.session.agent["boot_id"] != boot


async def test_turn_off_needs_a_hypervisor_connection(short_tmp):
    recorder = RecordingPower()
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        result = await power(pair, "stop", turn_off=True)
        assert result["Error"].startswith(
            "DemoVM: -TurnOff needs a hypervisor connection (QMP); DemoVM has none")
        assert recorder.calls == []


async def test_unknown_vm_is_not_found(short_tmp):
    recorder = RecordingPower()
    async with pair_with(short_tmp, recorder) as pair:
        response = await pair.api.post("/v1/power/stop", json={"vms": ["NoSuchVM"]})
        assert response.status_code == 404
        assert "no VM named 'NoSuchVM'" in response.json()["error"]


class BlindHypervisor:
    """A hypervisor connection that cannot tell the state (libvirt holds the QMP socket)."""

    name = "blind"

    def handles(self, vm) -> bool:
        return True

    async def state(self, vm):
        raise VmisError("QMP: the monitor socket is busy")

    async def wait_off(self, vm, timeout: float) -> bool:
        raise AssertionError("wait_off without a readable state")


async def test_stop_vm_goes_on_when_the_hypervisor_cannot_tell_the_state(short_tmp):
    recorder = RecordingPower()
    async with pair_with(short_tmp, recorder) as pair:
        recorder.pair = pair
        pair.manager.hypervisors.append(BlindHypervisor())  # type: ignore[arg-type]
        result = await power(pair, "stop")
        assert result["Error"] is None, result
        assert recorder.calls and recorder.calls[0][0] == "poweroff"
        assert "PoweredOff" not in result
