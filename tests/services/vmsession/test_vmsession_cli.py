"""Invoke-Command as an administrator uses it: the real CLI against a real lab (processes).

A lab VM is a sandboxed process on this machine (vmis.lab.sandbox): the
commands below run in it, with the machine's /usr and the VM's own root,
processes and network. The lab VM's policy allows /usr/bin and /bin. The
pids a command prints are the VM's own; the tests look them up in the VM's
/proc.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.lab import (
    SESSION_CONF,
    SESSION_ENABLED,
    configured_lab,
    guest_proc,
    run_vmis,
    start_lab,
)

from vmis.lab.lab import Lab

CONF, ENABLED = SESSION_CONF, SESSION_ENABLED


def write_conf(lab_dir: Path, enabled: bool) -> None:
    conf = lab_dir / "vms" / "DemoVM" / "root" / "etc" / "vmis" / "agent.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(CONF + (ENABLED if enabled else ""))


def env(lab_dir: Path) -> dict[str, str]:
    return dict(os.environ, VMIS_LAB_DIR=str(lab_dir), VMIS_SOCKET=str(lab_dir / "host.sock"))


def popen(lab_dir: Path, *args: str) -> subprocess.Popen:
    """Start ``vmis ARGS`` with pipes, as a user's terminal would run it."""
    return subprocess.Popen([sys.executable, "-m", "vmis.cli.host", *args], env=env(lab_dir),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def alive(lab_dir: Path, pid: int) -> bool:
    """Whether the lab VM's process *pid* (a pid of its own PID namespace) runs."""
    stat = guest_proc(lab_dir) / str(pid) / "stat"
    try:
        return stat.read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(lab_dir: Path, pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(lab_dir, p) for p in pids):
        assert time.monotonic() < deadline, \
            f"still running: {[p for p in pids if alive(lab_dir, p)]}"
        time.sleep(0.05)


def one_line_error(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture(scope="module")
def session_lab():
    """A lab whose DemoVM has VM Session enabled (startup Automatic)."""
    with configured_lab(CONF + ENABLED) as directory:
        yield directory


def test_refused_while_disabled_in_the_guest_then_runs_once_enabled(lab_dir):
    write_conf(lab_dir, enabled=False)
    start_lab(lab_dir)
    refused = run_vmis(lab_dir, "Invoke-Command", "-VMName", "DemoVM", "--", "echo", "hi")
    assert refused.code == 255 and refused.out == ""
    line = one_line_error(refused.err)
    assert line.startswith("Invoke-Command: DemoVM:") and "StartupType Disabled" in line
    assert "vmis-guest Set-Service -Name vmicvmsession -StartupType Automatic" in line
    for args in (("Set-Service", "-Name", "vmicvmsession", "-StartupType", "Automatic"),
                 ("Start-Service", "-Name", "vmicvmsession")):
        result = run_vmis(lab_dir, "lab", "guest", "DemoVM", "--", *args)
        assert result.code == 0, result.err
    result = run_vmis(lab_dir, "exec", "DemoVM", "--", "echo", "hi")
    assert (result.code, result.out, result.err) == (0, "hi\n", "")


def test_output_streams_live(session_lab):
    code = ("import time\nfor i in range(10):\n    print('line', i, flush=True)\n"
            "    time.sleep(0.5)\n")
    proc = popen(session_lab, "Invoke-Command", "-VMName", "DemoVM", "--", "python3", "-c",
                 code)
    arrivals = []
    assert proc.stdout is not None
    for line in proc.stdout:
        arrivals.append((time.monotonic(), line.decode().strip()))
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    assert [text for _, text in arrivals] == [f"line {i}" for i in range(10)]
    # printed over 4.5 s: the lines arrive spread over that time, not all at the end
    assert arrivals[-1][0] - arrivals[0][0] >= 3.5
    assert sum(1 for a, b in zip(arrivals, arrivals[1:]) if b[0] - a[0] >= 0.2) >= 6


def test_ctrl_c_stops_the_remote_process_group(session_lab):
    proc = popen(session_lab, "exec", "DemoVM", "--", "sh", "-c",
                 "sleep 300 & echo $$ $!; while :; do echo tick; sleep 0.2; done")
    assert proc.stdout is not None and proc.stderr is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(alive(session_lab, p) for p in pids)
    assert proc.stdout.readline() == b"tick\n"
    assert proc.stdout.readline() == b"tick\n"  # still streaming
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    proc.stdout.read()
    assert proc.wait(20) == 130  # the shell died of SIGINT: 128 + 2
    assert time.monotonic() - started < 10
    assert b"Traceback" not in proc.stderr.read()
    # the shell ends at SIGINT; its background sleep ignores SIGINT (POSIX '&'
    # job) and ends at the SIGKILL after kill_grace
    wait_gone(session_lab, pids)


def test_a_reader_that_stops_reading_holds_the_remote_writer_back(session_lab):
    total = 100_000_000
    proc = popen(session_lab, "exec", "DemoVM", "--", "sh", "-c",
                 f"echo $$; exec head -c {total} /dev/zero")
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    time.sleep(3)  # we read nothing: pipes, the CLI and the 1 MiB window fill up
    assert alive(session_lab, pid), "the remote writer finished although nobody read its output"
    received = 0
    while chunk := proc.stdout.read(1 << 20):
        received += len(chunk)
    assert proc.wait(60) == 0 and received == total


def test_a_killed_client_kills_the_remote_command(session_lab):
    proc = popen(session_lab, "exec", "DemoVM", "--", "sh", "-c", "echo $$; exec sleep 300")
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert alive(session_lab, pid)
    proc.kill()
    proc.wait(10)
    wait_gone(session_lab, [pid])


def test_stdin_exit_code_and_stderr_apart(session_lab):
    result = run_vmis(session_lab, "exec", "DemoVM", "--", "cat", input="hello\nworld\n")
    assert (result.code, result.out, result.err) == (0, "hello\nworld\n", "")
    result = run_vmis(session_lab, "exec", "DemoVM", "--", "sh", "-c",
                      "echo to-out; echo to-err >&2; exit 7")
    assert (result.code, result.out, result.err) == (7, "to-out\n", "to-err\n")
    result = run_vmis(session_lab, "exec", "DemoVM", "--", "sh", "-c", "kill -TERM $$")
    assert result.code == 128 + 15
    result = run_vmis(session_lab, "exec", "DemoVM", "-NoStdin", "--", "cat", input="ignored")
    assert (result.code, result.out) == (0, "")
    result = run_vmis(session_lab, "exec", "DemoVM", "-Environment", "GREETING=hi there",
                      "-WorkingDirectory", "/", "--", "sh", "-c", 'echo "$GREETING"; pwd')
    assert result.out.splitlines() == ["hi there", "/"]  # the VM's root is its /


def test_timeout_kills_and_says_so(session_lab):
    started = time.monotonic()
    result = run_vmis(session_lab, "exec", "DemoVM", "-TimeoutSec", "1", "--", "sleep", "60")
    assert result.code == 124
    assert "ran out of time (1 s)" in one_line_error(result.err)
    assert time.monotonic() - started < 20


def test_commands_off_the_allow_list_are_refused(session_lab):
    script = Lab(session_lab).vm("DemoVM").root / "opt/tool.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    result = run_vmis(session_lab, "exec", "DemoVM", "--", "/opt/tool.sh")
    assert result.code == 255 and result.out == ""
    assert "/opt/tool.sh is not on the guest's allow-list" in one_line_error(result.err)
    result = run_vmis(session_lab, "exec", "DemoVM", "--", "no-such-program-vmis")
    assert result.code == 255 and "no executable" in one_line_error(result.err)


def test_a_quiet_command_outlives_every_keepalive_deadline(session_lab):
    # keepalives every 0.5 s on both links: each side would give up after
    # 2-3 s of silence; the command is silent for 6 s
    started = time.monotonic()
    result = run_vmis(session_lab, "exec", "DemoVM", "-KeepAliveSec", "0.5", "--", "sh", "-c",
                      "sleep 6; echo awake")
    assert (result.code, result.out, result.err) == (0, "awake\n", "")
    assert time.monotonic() - started >= 6


def test_usage_and_both_logs(session_lab):
    result = run_vmis(session_lab, "exec", "-?")
    assert result.code == 0 and "Invoke-Command -VMName" in result.out
    assert "[-- COMMAND ARGS...]" in result.out
    result = run_vmis(session_lab, "exec", "DemoVM")
    assert result.code == 2 and "after '--'" in result.err
    result = run_vmis(session_lab, "icm", "DemoVM", "--", "sh", "-c", "exit 5")
    assert result.code == 5
    host_log = (session_lab / "host.log").read_text()
    agent_log = Lab(session_lab).vm("DemoVM").log.read_text()
    assert "started sh -c 'exit 5'" in host_log and "exit code 5" in host_log
    assert "requested by" in agent_log and "started sh -c 'exit 5'" in agent_log
    assert "ended: exited, exit code 5" in agent_log


def test_json_output_and_exit(session_lab):
    result = run_vmis(session_lab, "exec", "DemoVM", "--json", "-NoStdin", "--", "sh", "-c",
                      "echo out; printf 'caf\\351\\n' >&2; exit 3")
    assert result.code == 3 and result.err == ""
    answer = json.loads(result.out)
    assert answer["VMName"] == "DemoVM" and answer["Command"][:2] == ["sh", "-c"]
    assert (answer["ExitCode"], answer["Signal"], answer["Reason"]) == (3, None, "exited")
    # JSON carries text: a byte that is not UTF-8 is U+FFFD
    assert (answer["Stdout"], answer["Stderr"]) == ("out\n", "caf\ufffd\n")
    # a signal's exit status, as a shell shows it; --json after '--' is the command's
    result = run_vmis(session_lab, "exec", "DemoVM", "-json", "--", "sh", "-c",
                      "echo --json; kill -TERM $$")
    answer = json.loads(result.out)
    assert result.code == answer["ExitCode"] == 128 + signal.SIGTERM
    assert answer["Signal"] == signal.SIGTERM and answer["Stdout"] == "--json\n"


def test_a_changed_allow_list_applies_after_sighup(lab_dir):
    # VM Session enabled in the guest, but its allow-list empty
    write_conf(lab_dir, enabled=True)
    conf = lab_dir / "vms" / "DemoVM" / "root" / "etc" / "vmis" / "agent.conf"
    conf.write_text(conf.read_text().replace("allow = /usr/bin/*, /bin/*\n", ""))
    start_lab(lab_dir)
    refused = run_vmis(lab_dir, "exec", "DemoVM", "--json", "--", "echo", "hi")
    assert refused.code == 255 and refused.out == ""
    error = json.loads(one_line_error(refused.err))
    assert error["Code"] == "denied" and "allows no commands" in error["Error"]
    assert error["Type"] == "RemoteServiceError"
    write_conf(lab_dir, enabled=True)
    os.kill(Lab(lab_dir).vm("DemoVM").pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while (result := run_vmis(lab_dir, "exec", "DemoVM", "--", "echo", "hi")).code != 0:
        assert time.monotonic() < deadline, f"not allowed 10 s after SIGHUP: {result.err}"
        time.sleep(0.2)
    assert (result.out, result.err) == ("hi\n", "")
    assert "configuration reloaded" in Lab(lab_dir).vm("DemoVM").log.read_text()
    # a bad file keeps the running settings, and says why in the agent's log
    conf.write_text(conf.read_text() + "[nosuchsection]\n")
    os.kill(Lab(lab_dir).vm("DemoVM").pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "configuration not reloaded" not in Lab(lab_dir).vm("DemoVM").log.read_text():
        assert time.monotonic() < deadline, "no word of the bad file in the agent's log"
        time.sleep(0.1)
    assert run_vmis(lab_dir, "exec", "DemoVM", "--", "echo", "still").out == "still\n"
