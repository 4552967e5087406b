"""Shutdown pieces without a channel: logind inhibitors, the lab's stand-in, the guest handler."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from vmis.errors import ServiceError, VmisError
from vmis.guest.adapters import LAB_INHIBIT_DIR, LabPower, SystemPower
from vmis.guest.config import AgentConfig
from vmis.protocol import RequestReceived, ServiceId, decode_json, encode_json
from vmis.services.guest_half import GuestContext
from vmis.services.shutdown import ShutdownOp, parse_inhibitors
from vmis.services.shutdown.guest import ShutdownService

# What `busctl --json=short call ... ListInhibitors` prints: the a(ssssuu) reply
LIST_INHIBITORS = {"type": "a(ssssuu)", "data": [[
    ["shutdown:sleep", "GNOME Shell", "Unsaved changes in report.odt", "block", 1000, 2210],
    ["shutdown", "Unattended Upgrades Shutdown", "Stop ongoing upgrades", "delay", 0, 742],
    ["sleep", "backup", "nightly backup", "block", 0, 999],
    ["handle-power-key:shutdown", "apt", "upgrading packages", "block-weak", 0, 31337],
]]}


def test_parse_inhibitors_keeps_block_inhibitors_on_shutdown():
    assert parse_inhibitors(json.dumps(LIST_INHIBITORS)) == [
        "GNOME Shell (pid 2210): Unsaved changes in report.odt",
        "apt (pid 31337): upgrading packages",
    ]
    assert parse_inhibitors('{"type":"a(ssssuu)","data":[[]]}') == []


@pytest.mark.parametrize("bad", ['{"type":"s","data":"x"}', "[]", '{"data":[[["a"]]]}', "nope"])
def test_parse_inhibitors_rejects_other_output(bad):
    with pytest.raises(ValueError):
        parse_inhibitors(bad)


def python_printing(text: str) -> tuple[str, ...]:
    return (sys.executable, "-c", f"import sys; sys.stdout.write({text!r})")


def test_system_power_asks_logind_through_the_configured_command():
    power = SystemPower(list_inhibitors=python_printing(json.dumps(LIST_INHIBITORS)))
    assert len(power.blockers()) == 2


def test_system_power_without_logind_sees_no_inhibitors():
    assert SystemPower(list_inhibitors=("/nonexistent/busctl",)).blockers() == []
    failing = (sys.executable, "-c", "import sys; sys.exit('Failed to connect to bus')")
    assert SystemPower(list_inhibitors=failing).blockers() == []


def test_system_power_refuses_to_guess_on_garbage():
    with pytest.raises(VmisError, match="unexpected answer from logind"):
        SystemPower(list_inhibitors=python_printing("not json")).blockers()


def test_lab_power_blockers_are_files_in_the_lab_root(tmp_path):
    power = LabPower(tmp_path)
    assert power.blockers() == []
    directory = tmp_path / LAB_INHIBIT_DIR
    directory.mkdir(parents=True)
    (directory / "backup").write_text("nightly backup running\n")
    (directory / "editor").write_text("")
    assert power.blockers() == ["backup: nightly backup running", "editor: no reason given"]


class Power:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def poweroff(self, reason: str) -> None:
        self.calls.append("poweroff")

    def reboot(self, reason: str) -> None:
        self.calls.append("reboot")

    def blockers(self) -> list[str]:
        return ["x: y"]


def request(body: dict) -> RequestReceived:
    return RequestReceived(service=ServiceId.SHUTDOWN, op=ShutdownOp.SHUTDOWN, id=1,
                           payload=encode_json(body))


@pytest.fixture
def service(tmp_path):
    ctx = GuestContext(root=tmp_path, config=AgentConfig(), notify=lambda *a: None,
                       adapters={"power": Power()})
    return ShutdownService(ctx)


async def test_the_handler_rejects_bad_requests(service):
    with pytest.raises(ServiceError) as err:
        await service._shutdown(request({"action": "hibernate"}))
    assert err.value.code == "bad-request"
    with pytest.raises(ServiceError) as err:
        await service._shutdown(request({"action": "poweroff", "force": True,
                                         "reason": "x" * 2049}))
    assert err.value.code == "too-large"


async def test_inhibitor_check_can_be_turned_off(tmp_path):
    config = AgentConfig(check_inhibitors=False)
    power = Power()
    ctx = GuestContext(root=tmp_path, config=config, notify=lambda *a: None,
                       adapters={"power": power})
    service = ShutdownService(ctx)
    await service.start()
    try:
        answer = decode_json(await service._shutdown(request({"action": "reboot"})))
        assert power.calls == []
        assert answer == {"action": "reboot", "force": False, "accepted": True}
        # a second request while the first is under way is refused
        with pytest.raises(ServiceError, match="already in progress") as err:
            await service._shutdown(request({"action": "poweroff", "force": True}))
        assert err.value.code == "busy"
        await asyncio.sleep(0.5)
        assert power.calls == ["reboot"]  # after the answer, not before
    finally:
        await service.stop()
