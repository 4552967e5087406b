"""Checkpoints through the host API: freeze -> snapshot step -> thaw, and every fallback.

The host and the guest run in the test's loop, joined by a real channel;
the guest freezes through the lab freezer (a fake that records, never a
real FIFREEZE).
"""

import asyncio
import contextlib
import json
import time
from pathlib import Path

from support.pair import eventually, host_guest_pair
from vss_support import add_hook, hook_log

from vmis.errors import ChannelClosed, RequestTimeout, ServiceUnavailable, SnapshotError
from vmis.protocol import decode_json, encode_json
from vmis.services.catalog import by_key
from vmis.services.hypervisor import SnapshotResult
from vmis.services.vss import VssOp
from vmis.services.vss.checkpoint import CheckpointPlan, CheckpointRun, SnapshotType

VSS = by_key("vss")


def snapshot_script(tmp: Path, root: Path, body: str = "") -> tuple[str, Path]:
    """A snapshot command recording its environment and the fake kernel's state to a file."""
    out = tmp / "snapshot.out"
    script = tmp / "snapshot.sh"
    script.write_text(f"""#!/bin/sh
{{
  echo "vm=$VMIS_VM_NAME"
  echo "name=$VMIS_CHECKPOINT_NAME"
  echo "consistency=$VMIS_CONSISTENCY"
  echo "fs=$(printf '%s' "$VMIS_FROZEN_FILESYSTEMS" | tr '\\n' ',')"
  echo "kernel=$(cat {root}/run/vmis/freezer.json 2>/dev/null || echo '{{"frozen": []}}')"
}} > {out}
{body}
""")
    script.chmod(0o755)
    return str(script), out


def recorded(out: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


async def checkpoint(pair, **body):
    response = await pair.api.post("/v1/vms/DemoVM/checkpoints", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def set_command(pair, command):
    response = await pair.api.patch("/v1/vms/DemoVM/vss", json={"snapshot_command": command})
    assert response.status_code == 200, response.text
    return response.json()


def steps(report):
    return [(s["Step"], s["Target"], s["Result"]) for s in report["Steps"]]


def freezer(pair):
    return pair.agent.ctx.adapters["freezer"]


# Section: Production


async def test_production_checkpoint_freezes_snapshots_and_thaws_in_order(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        add_hook(pair.root, "10-db")
        add_hook(pair.root, "20-app")
        command, out = snapshot_script(short_tmp, pair.root)
        assert (await set_command(pair, command))["SnapshotStep"] == f"command: {command}"
        report = await checkpoint(pair, name="nightly", snapshot_type="Production")
        assert report["Status"] == "Completed" and report["Error"] is None
        assert (report["Taken"], report["Consistency"]) == ("Production", "application")
        assert report["Warnings"] == []
        assert report["FrozenFilesystems"] == ["/var", "/"]
        assert report["GuestState"] == "thawed" and report["FrozenSeconds"] > 0
        assert steps(report) == [
            ("freeze hook", "10-db", "ok"), ("freeze hook", "20-app", "ok"),
            ("freeze", "/var, /", "ok"), ("snapshot", "command", "ok"),
            ("thaw", "/, /var", "ok"), ("thaw hook", "20-app", "ok"),
            ("thaw hook", "10-db", "ok"),
        ]
        # the snapshot ran while the guest was frozen, and knew it
        seen = recorded(out)
        assert seen["consistency"] == "application" and seen["fs"] == "/var,/"
        assert (seen["vm"], seen["name"]) == ("DemoVM", "nightly")
        assert sorted(json.loads(seen["kernel"])["frozen"]) == ["/", "/var"]
        # the hooks ran outside the frozen window, in order
        assert hook_log(pair.root) == [("10-db freeze", []), ("20-app freeze", []),
                                       ("20-app thaw host", []), ("10-db thaw host", [])]
        assert freezer(pair).frozen == set() and not pair.agent.ctx.frozen
        history = (await pair.api.get("/v1/checkpoints", params={"vm": "demo*"})).json()
        assert [(h["Name"], h["Status"], h["Taken"]) for h in history] == \
            [("nightly", "Completed", "Production")]


async def test_default_name_and_per_checkpoint_command(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        command, out = snapshot_script(short_tmp, pair.root)
        report = await checkpoint(pair, snapshot_command=command)
        assert report["Status"] == "Completed"
        assert report["Name"].startswith("DemoVM - (") and report["Name"].endswith("M)")
        assert recorded(out)["name"] == report["Name"]


async def test_no_snapshot_step_is_refused_before_anything_happens(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        response = await pair.api.post("/v1/vms/DemoVM/checkpoints", json={})
        assert response.status_code == 409
        assert "vmis vm set-snapshot-command -Name DemoVM" in response.json()["error"]
        assert freezer(pair).calls == []
        response = await pair.api.post("/v1/vms/NoSuchVM/checkpoints", json={})
        assert response.status_code == 404


# Section: Standard and the fallbacks


async def test_standard_checkpoint_leaves_the_guest_alone(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        add_hook(pair.root, "10-db")
        command, out = snapshot_script(short_tmp, pair.root)
        await set_command(pair, command)
        report = await checkpoint(pair, snapshot_type="Standard")
        assert report["Status"] == "Completed" and report["Warnings"] == []
        assert (report["Taken"], report["Consistency"]) == ("Standard", "crash")
        assert steps(report) == [("snapshot", "command", "ok")]
        assert recorded(out)["consistency"] == "crash"
        assert freezer(pair).calls == [] and hook_log(pair.root) == []


async def test_vss_disabled_production_falls_back_and_production_only_fails(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        add_hook(pair.root, "10-db")
        command, out = snapshot_script(short_tmp, pair.root)
        await set_command(pair, command)
        await pair.manager.set_enabled(["DemoVM"], ["VSS"], False)

        only = await checkpoint(pair, snapshot_type="ProductionOnly")
        assert only["Status"] == "Failed" and only["Taken"] is None
        assert "disabled on the host" in only["Error"]
        assert "ProductionOnly does not fall back" in only["Error"]
        assert not out.exists()  # no snapshot was taken

        report = await checkpoint(pair, snapshot_type="Production")
        assert report["Status"] == "Completed"
        assert (report["Taken"], report["Consistency"]) == ("Standard", "crash")
        assert len(report["Warnings"]) == 1
        assert "disabled on the host" in report["Warnings"][0]
        assert "a standard (crash-consistent) checkpoint was taken instead" in \
            report["Warnings"][0]
        assert recorded(out)["consistency"] == "crash"
        assert freezer(pair).calls == [] and hook_log(pair.root) == []
        history = (await pair.api.get("/v1/checkpoints", params={"vm": "DemoVM"})).json()
        assert [h["Status"] for h in history] == ["Failed", "Completed"]


async def test_failing_hook_runs_freezefail_then_falls_back_or_fails(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        add_hook(pair.root, "10-db")
        add_hook(pair.root, "20-app", "if [ \"$1\" = freeze ]; then echo 'app busy'; exit 4; fi")
        command, out = snapshot_script(short_tmp, pair.root)
        await set_command(pair, command)

        only = await checkpoint(pair, snapshot_type="ProductionOnly")
        assert only["Status"] == "Failed" and not out.exists()
        assert "20-app freeze: exit 4: app busy" in only["Error"]
        assert steps(only) == [
            ("freeze hook", "10-db", "ok"), ("freeze hook", "20-app", "failed"),
            ("freezefail hook", "20-app", "ok"), ("freezefail hook", "10-db", "ok"),
            ("freeze", "", "failed"),
        ]
        assert [e for e, _ in hook_log(pair.root)] == [
            "10-db freeze", "20-app freeze", "20-app freezefail hook", "10-db freezefail hook"]
        assert freezer(pair).calls == []

        report = await checkpoint(pair, snapshot_type="Production")
        assert report["Status"] == "Completed" and report["Taken"] == "Standard"
        assert "app busy" in report["Warnings"][0]
        assert recorded(out)["consistency"] == "crash"


# Section: snapshot failures


async def test_failing_snapshot_fails_the_checkpoint_and_still_thaws(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        add_hook(pair.root, "10-db")
        command, out = snapshot_script(short_tmp, pair.root, "echo 'disk full' >&2; exit 7")
        await set_command(pair, command)
        report = await checkpoint(pair)
        assert report["Status"] == "Failed" and report["Taken"] is None
        assert report["Error"] == "snapshot failed: the snapshot command failed (exit 7): disk full"
        assert report["Snapshot"]["Output"] == "disk full\n"
        assert steps(report)[-3:] == [("snapshot", "command", "failed"),
                                      ("thaw", "/, /var", "ok"), ("thaw hook", "10-db", "ok")]
        assert report["GuestState"] == "thawed"
        assert freezer(pair).frozen == set() and not pair.agent.ctx.frozen
        assert recorded(out)["consistency"] == "application"  # it did run, frozen


async def test_snapshot_longer_than_the_freeze_window_is_cut_off_before_the_watchdog(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        command, _ = snapshot_script(short_tmp, pair.root, f"sleep 30; touch {short_tmp}/late")
        await set_command(pair, command)
        start = time.monotonic()
        report = await checkpoint(pair, freeze_timeout=2)
        assert time.monotonic() - start < 10
        assert report["Status"] == "Failed"
        assert "did not finish within" in report["Error"]
        assert "freeze window" in report["Error"]
        # the host thawed it in time: not the watchdog
        assert report["GuestState"] == "thawed"
        assert freezer(pair).frozen == set()
        await asyncio.sleep(0.5)
        assert not (short_tmp / "late").exists()  # the command was killed


async def test_one_checkpoint_at_a_time_per_vm(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        command, _ = snapshot_script(short_tmp, pair.root, "sleep 1")
        await set_command(pair, command)
        first = asyncio.ensure_future(checkpoint(pair, name="first"))
        await eventually(lambda: pair.agent.manager.services["vss"].state == "frozen")
        response = await pair.api.post("/v1/vms/DemoVM/checkpoints", json={"name": "second"})
        assert response.status_code == 409
        assert "'first'" in response.json()["error"]
        status = (await pair.api.get("/v1/vms/DemoVM/vss")).json()
        assert status["CheckpointRunning"] == "first"
        assert status["Guest"]["state"] == "frozen"
        assert (await first)["Status"] == "Completed"
        status = (await pair.api.get("/v1/vms/DemoVM/vss")).json()
        assert status["CheckpointRunning"] is None and status["Guest"]["state"] == "thawed"


# Section: host sessions


async def test_reconnecting_host_thaws_a_guest_left_frozen_by_an_earlier_session(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        add_hook(pair.root, "10-db")
        # an earlier host froze the guest and went away without THAW
        await pair.session.request(VSS, VssOp.FREEZE, encode_json({"id": "old", "name": "lost"}))
        assert pair.agent.ctx.frozen
        pair.session.link.close()
        await eventually(lambda: not pair.agent.ctx.frozen, timeout=15)
        service = pair.agent.manager.services["vss"]
        assert service.cycle.reason == "host" and service.state == "thawed"
        await eventually(lambda: len(hook_log(pair.root)) == 2)
        assert hook_log(pair.root)[-1] == ("10-db thaw host", [])


async def test_settings_api(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        patch = await pair.api.patch("/v1/vms/DemoVM/vss", json={"snapshot_timeout": 42})
        assert patch.json()["SnapshotStep"] is None and patch.json()["SnapshotTimeout"] == 42
        assert (await set_command(pair, "true"))["SnapshotTimeout"] == 42
        cleared = await pair.api.patch("/v1/vms/DemoVM/vss", json={"clear": True})
        assert cleared.json()["SnapshotCommand"] is None
        empty = await pair.api.patch("/v1/vms/DemoVM/vss", json={"snapshot_command": " "})
        assert empty.status_code == 409


# Section: the runner against a scripted guest


class ScriptedPeer:
    """A VssPeer whose answers the test writes: a callable or an exception per op."""

    def __init__(self, **script):
        self.script = script
        self.calls = []
        self.reconnects = 0

    def check(self):
        if isinstance(self.script.get("check"), Exception):
            raise self.script["check"]

    async def request(self, op, body, timeout):
        self.calls.append(op.name)
        answers = self.script[op.name]
        answer = answers.pop(0) if isinstance(answers, list) else answers
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def wait_connected(self, timeout):
        self.reconnects += 1
        return True


class RecordingStep:
    kind = "test"

    def __init__(self, fail=False):
        self.requests = []
        self.fail = fail

    def describe(self):
        return "test step"

    async def take(self, request):
        self.requests.append(request)
        if self.fail:
            raise SnapshotError("no space")
        return SnapshotResult("done", data={"file": "snap0"})


def plan(kind=SnapshotType.PRODUCTION):
    return CheckpointPlan("V", "id-1", "cp-1", "cp", kind)


FROZEN = {"id": "cp-1", "frozen": ["/"], "thaw_in": 30.0, "timeout": 30.0, "freeze_ms": 1.0,
          "hooks": []}
THAWED = {"result": "thawed", "state": "thawed",
          "cycle": {"id": "cp-1", "thawed": ["/"], "frozen_for": 0.1, "hooks": []}}


async def test_unanswered_freeze_is_thawed_to_be_safe_then_falls_back():
    peer = ScriptedPeer(FREEZE=RequestTimeout("no answer within 900 s"), THAW=THAWED)
    step = RecordingStep()
    report = await CheckpointRun(plan(), peer, step).run()
    assert peer.calls == ["FREEZE", "THAW"]
    assert report.status == "Completed" and report.taken == "Standard"
    assert step.requests[0].consistency == "crash"
    assert "no answer within 900 s" in report.warnings[0]


async def test_thaw_waits_once_for_the_session_to_come_back():
    peer = ScriptedPeer(FREEZE=FROZEN, THAW=[ChannelClosed("channel lost"), THAWED])
    step = RecordingStep()
    report = await CheckpointRun(plan(), peer, step).run()
    assert peer.calls == ["FREEZE", "THAW", "THAW"] and peer.reconnects == 1
    assert report.status == "Completed" and report.taken == "Production"
    assert report.warnings == []
    request = step.requests[0]
    assert request.consistency == "application" and request.frozen == ("/",)
    # the step must end before the guest's watchdog: a margin below its 30 s
    assert 25 < request.timeout < 30
    assert report.snapshot["Data"] == {"file": "snap0"}


async def test_late_thaw_and_unreachable_guest_are_warnings_not_failures():
    late = {"result": "timed-out", "state": "timed-out",
            "cycle": {"id": "cp-1", "thawed": ["/"], "hooks": []}}
    report = await CheckpointRun(plan(), ScriptedPeer(FREEZE=FROZEN, THAW=late),
                                 RecordingStep()).run()
    assert report.status == "Completed"
    assert "already thawed by itself" in report.warnings[0]
    assert report.guest_state == "timed-out"

    gone = ScriptedPeer(FREEZE=FROZEN, THAW=ServiceUnavailable("V: no contact"))
    report = await CheckpointRun(plan(), gone, RecordingStep()).run()
    assert report.status == "Completed" and gone.calls == ["FREEZE", "THAW", "THAW"]
    assert "thaws by itself" in report.warnings[0]


async def test_failed_step_after_failed_vss_reports_the_step():
    peer = ScriptedPeer(check=ServiceUnavailable("V: VSS is not running"))
    report = await CheckpointRun(plan(), peer, RecordingStep(fail=True)).run()
    assert peer.calls == []
    assert report.status == "Failed" and report.error == "snapshot failed: no space"
    assert "VSS is not running" in report.warnings[0]
    assert [(s.step, s.result) for s in report.steps] == [("freeze", "skipped"),
                                                          ("snapshot", "failed")]


async def test_cancelled_run_thaws_before_it_ends():
    release = asyncio.Event()

    class Hanging(RecordingStep):
        async def take(self, request):
            release.set()
            await asyncio.sleep(60)

    peer = ScriptedPeer(FREEZE=FROZEN, THAW=THAWED)
    task = asyncio.ensure_future(CheckpointRun(plan(), peer, Hanging()).run())
    await release.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert peer.calls == ["FREEZE", "THAW"]


async def test_status_answer_decodes(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        status = decode_json(await pair.session.request(VSS, VssOp.STATUS))
        assert status["hooks_dir"] == "/etc/vmis/freeze.d"
