"""Freeze hooks: which files are hooks, their order, arguments, output and timeouts."""

import os
import time

from vmis.services.vss.hooks import OUTPUT_LIMIT, list_hooks, run_hook, run_hooks


def hook(directory, name, body, mode=0o755):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def test_hooks_are_executables_in_name_order_without_leftovers(tmp_path):
    d = tmp_path / "freeze.d"
    for name in ("20-app", "10-db", "B-upper", "a-lower", "99-last"):
        hook(d, name, "true")
    hook(d, "15-not-executable", "true", mode=0o644)
    for leftover in (".hidden", "30-app~", "40-x.dpkg-old", "50-y.rpmnew", "60-z.disabled"):
        hook(d, leftover, "true")
    (d / "70-directory").mkdir()
    assert [p.name for p in list_hooks(d)] == ["10-db", "20-app", "99-last", "B-upper",
                                               "a-lower"]
    assert list_hooks(tmp_path / "absent") == []


async def test_hook_gets_phase_environment_and_its_output_goes_to_memory(tmp_path):
    path = hook(tmp_path, "10-db", 'echo "phase=$1 name=$VMIS_X cwd=$(pwd)"; echo oops >&2')
    result = await run_hook(path, "freeze", timeout=10, cwd=tmp_path, env={"VMIS_X": "nightly"})
    assert result.ok and result.exit == 0
    assert result.output == f"phase=freeze name=nightly cwd={tmp_path}\noops\n"
    assert result.to_json()["result"] == "ok"


async def test_failing_hook_reports_exit_and_last_line(tmp_path):
    path = hook(tmp_path, "20-app", "echo first; echo 'cannot flush'; exit 3")
    result = await run_hook(path, "freeze", timeout=10, cwd=tmp_path, env={})
    assert (result.result, result.exit, result.ok) == ("failed", 3, False)
    assert result.summary() == "20-app freeze: exit 3: cannot flush"


async def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    # the hook starts a child that would outlive it, then hangs
    path = hook(tmp_path, "30-slow", f"sleep 60 & echo $! > {pidfile}; sleep 60")
    start = time.monotonic()
    result = await run_hook(path, "freeze", timeout=0.5, cwd=tmp_path, env={})
    assert result.result == "timeout" and result.exit is None
    assert time.monotonic() - start < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the hook's child survived the timeout")
    assert "killed after" in result.summary()


async def test_output_is_bounded_to_its_end(tmp_path):
    path = hook(tmp_path, "40-chatty",
                f"head -c {OUTPUT_LIMIT * 4} /dev/zero | tr '\\0' x; echo; echo THE-END")
    result = await run_hook(path, "thaw", timeout=10, cwd=tmp_path, env={})
    assert result.ok
    assert len(result.output) == OUTPUT_LIMIT
    assert result.output.endswith("THE-END\n")


async def test_a_daemon_holding_the_pipe_does_not_block(tmp_path):
    # the hook exits at once but leaves a process that keeps stdout open
    path = hook(tmp_path, "50-daemon", "sleep 30 & echo started")
    start = time.monotonic()
    result = await run_hook(path, "thaw", timeout=10, cwd=tmp_path, env={})
    assert result.ok and result.output.startswith("started")
    assert time.monotonic() - start < 5


async def test_unstartable_hook_is_an_error_not_an_exception(tmp_path):
    path = tmp_path / "60-broken"
    path.write_text("#!/nonexistent/interpreter\n")
    path.chmod(0o755)
    result = await run_hook(path, "freeze", timeout=5, cwd=tmp_path, env={})
    assert result.result == "error" and not result.ok
    assert "could not be started" in result.summary()


async def test_freeze_phase_stops_at_the_first_failure_others_run_all(tmp_path):
    d = tmp_path / "d"
    hooks = [hook(d, "10-a", "true"), hook(d, "20-b", "exit 1"), hook(d, "30-c", "true")]
    freeze = await run_hooks(hooks, "freeze", timeout=5, cwd=tmp_path, env={},
                             stop_on_failure=True)
    assert [(r.name, r.result) for r in freeze] == [("10-a", "ok"), ("20-b", "failed")]
    thaw = await run_hooks(list(reversed(hooks)), "thaw", timeout=5, cwd=tmp_path, env={})
    assert [(r.name, r.result) for r in thaw] == [("30-c", "ok"), ("20-b", "failed"),
                                                  ("10-a", "ok")]
