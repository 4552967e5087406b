"""VM Session end to end in one process: host RemoteCommand <-> real channel <-> guest service.

The commands really run (this machine is the guest of an in-process pair),
so every test sticks to harmless programs: sh, echo, cat, sleep, python -c.
"""

import asyncio
import logging
import os
import sys
from dataclasses import replace

import pytest
from support.pair import eventually, host_guest_pair, quick_config

from vmis.errors import ChannelError, RemoteServiceError, ServiceUnavailable
from vmis.guest.config import AgentConfig
from vmis.protocol import ServiceId
from vmis.services.catalog import StartupType
from vmis.services.vmsession import DEFAULT_WINDOW, MIN_WINDOW, VmSessionOp
from vmis.services.vmsession.host import Exit, InputCredit, Output, RemoteCommand, VmSessionHost
from vmis.services.vmsession.policy import SessionConfig

PY = os.path.realpath(sys.executable)


def config(startup: str = "automatic", **changes) -> AgentConfig:
    """A lab-style agent whose VM Session runs python, sh and the tools in /usr/bin."""
    session = SessionConfig(allow=("/usr/bin/*", "/bin/*", PY), keepalive=0.3, kill_grace=1.0)
    startups = {**AgentConfig().startup, "vmicvmsession": StartupType(startup)}
    return quick_config(startup=startups, vmsession=replace(session, **changes))


def alive(pid: int) -> bool:
    """True while *pid* runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def collect(cmd: RemoteCommand, timeout: float = 30) -> tuple[bytes, bytes, Exit]:
    """Read every event of *cmd*; return stdout, stderr and the exit."""
    out, err = bytearray(), bytearray()
    async with asyncio.timeout(timeout):
        while True:
            event = await cmd.next_event()
            if isinstance(event, Output):
                (out if event.stream == 1 else err).extend(event.data)
                cmd.ack(len(event.data))
            elif isinstance(event, Exit):
                return bytes(out), bytes(err), event


async def run(pair, argv, **kwargs) -> tuple[bytes, bytes, Exit]:
    cmd = await RemoteCommand.start(pair.session, argv, **kwargs)
    return await collect(cmd)


async def first_line(cmd: RemoteCommand) -> bytes:
    """Read stdout up to its first newline (acknowledging as it goes)."""
    line = bytearray()
    while b"\n" not in line:
        event = await asyncio.wait_for(cmd.next_event(), 15)
        if isinstance(event, Output):
            line.extend(event.data)
            cmd.ack(len(event.data))
        assert not isinstance(event, Exit), line
    return bytes(line).split(b"\n")[0]


# Section: availability and policy


async def test_disabled_by_default_and_refused_with_the_way_to_enable_it(short_tmp):
    base = quick_config(vmsession=SessionConfig(allow=("/usr/bin/*",)))
    async with host_guest_pair(short_tmp, config=base) as pair:
        assert not pair.agent.manager.services["vmsession"].running
        with pytest.raises(ServiceUnavailable) as info:
            await RemoteCommand.start(pair.session, ["echo", "hi"])
        text = str(info.value)
        assert "DemoVM" in text and "StartupType Disabled" in text
        assert "Set-Service -Name vmicvmsession -StartupType Automatic" in text
        # enabled in the guest, it answers
        manager, spec = pair.agent.manager, pair.agent.manager.services["vmsession"].spec
        await manager.guest_set_startup(spec, StartupType.MANUAL)
        await manager.guest_start(spec)
        await eventually(lambda: pair.session.guest["vmsession"].state == "running")
        out, _, ended = await run(pair, ["echo", "hi"])
        assert (out, ended.status) == (b"hi\n", 0)
        # stopped again: refused again
        await manager.guest_stop(spec)
        await eventually(lambda: pair.session.guest["vmsession"].state == "stopped")
        with pytest.raises(ServiceUnavailable, match="stopped in the guest"):
            await RemoteCommand.start(pair.session, ["echo", "hi"])


async def test_a_stale_host_view_still_gets_a_clear_refusal(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        # the guest stops the service but the host has not heard yet
        service = pair.agent.manager.services["vmsession"]
        await service.stop()
        assert pair.session.guest["vmsession"].state == "running"
        with pytest.raises(ServiceUnavailable, match="vmicvmsession is not running"):
            await RemoteCommand.start(pair.session, ["echo", "hi"])


async def test_allow_list_refusals(short_tmp):
    script = short_tmp / "tool.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    async with host_guest_pair(short_tmp, config=config()) as pair:
        with pytest.raises(RemoteServiceError) as info:
            await RemoteCommand.start(pair.session, [str(script)])
        assert info.value.code == "denied" and "not on the guest's allow-list" in str(info.value)
        with pytest.raises(RemoteServiceError) as info:
            await RemoteCommand.start(pair.session, ["no-such-command-vmis"])
        assert info.value.code == "not-found"
        with pytest.raises(RemoteServiceError) as info:
            await RemoteCommand.start(pair.session, ["echo"], env={"LD_PRELOAD": "x.so"})
        assert info.value.code == "denied"
        assert not pair.session.part(VmSessionHost).open  # refused sessions are forgotten
    async with host_guest_pair(short_tmp / "empty", config=config(allow=())) as pair:
        with pytest.raises(RemoteServiceError, match="allows no commands"):
            await RemoteCommand.start(pair.session, ["echo", "hi"])


async def test_max_sessions(short_tmp):
    async with host_guest_pair(short_tmp, config=config(max_sessions=1)) as pair:
        first = await RemoteCommand.start(pair.session, ["sleep", "30"])
        with pytest.raises(RemoteServiceError) as info:
            await RemoteCommand.start(pair.session, ["echo"])
        assert info.value.code == "busy"
        await first.signal("KILL")
        _, _, ended = await collect(first)
        assert ended.signal == 9
        await run(pair, ["true"])


# Section: streams, exit status, environment


async def test_stdout_stderr_apart_exit_code_and_signal_death(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        out, err, ended = await run(pair, ["sh", "-c", "echo out; echo err >&2; exit 7"])
        assert (out, err) == (b"out\n", b"err\n")
        assert (ended.code, ended.signal, ended.reason, ended.status) == (7, None, "exited", 7)
        _, _, ended = await run(pair, ["sh", "-c", "kill -9 $$"])
        assert (ended.code, ended.signal, ended.status) == (None, 9, 137)


async def test_environment_working_directory_and_user(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        (pair.root / "srv").mkdir()
        out, _, _ = await run(pair, ["sh", "-c", 'echo "$GREETING|$PWD|$PATH"'],
                              env={"GREETING": "hello world"}, cwd="/srv")
        assert out.decode() == f"hello world|{pair.root / 'srv'}|{SessionConfig().path}\n"
        # by default a lab VM's commands start in its root (no home inside it)
        out, _, _ = await run(pair, ["pwd"])
        assert out.decode().strip() == str(pair.root)
        with pytest.raises(RemoteServiceError) as info:
            await RemoteCommand.start(pair.session, ["pwd"], cwd="/nowhere")
        assert info.value.code == "not-found"


async def test_binary_output_is_raw_and_complete(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        code = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)"
        out, _, ended = await run(pair, [PY, "-c", code])
        assert ended.status == 0 and out == bytes(range(256)) * 4096


async def test_stdin_passes_through_in_both_windows(short_tmp):
    data = os.urandom(3 * DEFAULT_WINDOW + 12345)  # more than one input window
    async with host_guest_pair(short_tmp, config=config()) as pair:
        cmd = await RemoteCommand.start(pair.session, ["cat"], stdin=True)
        assert cmd.input_window == DEFAULT_WINDOW

        async def feed() -> None:
            await cmd.write(data)
            cmd.close_input()

        feeder = asyncio.create_task(feed())
        out, _, ended = await collect(cmd)
        await feeder
        assert ended.status == 0 and out == data


async def test_without_stdin_the_command_reads_end_of_file(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        out, _, ended = await run(pair, ["cat"])
        assert (out, ended.status) == (b"", 0)


# Section: flow control


async def test_a_slow_reader_holds_the_producer_back(short_tmp):
    total = 16 * 1024 * 1024
    code = ("import sys\nfor _ in range(256): sys.stdout.buffer.write(b'x' * 65536)\n"
            "sys.stdout.flush()\nprint('done', file=sys.stderr, flush=True)")
    async with host_guest_pair(short_tmp, config=config()) as pair:
        cmd = await RemoteCommand.start(pair.session, [PY, "-c", code], window=MIN_WINDOW)
        guest = pair.agent.manager.services["vmsession"].sessions[cmd.sid]
        await asyncio.sleep(1.5)  # nobody reads
        # the host holds at most one window, and the producer is blocked on its pipe
        assert 0 < cmd.buffered <= MIN_WINDOW
        assert guest.proc.returncode is None
        assert guest.window.available == 0
        received, peak = 0, 0
        async with asyncio.timeout(60):
            while True:
                event = await cmd.next_event()
                peak = max(peak, cmd.buffered)
                if isinstance(event, Output):
                    received += len(event.data) if event.stream == 1 else 0
                    cmd.ack(len(event.data))
                elif isinstance(event, Exit):
                    break
        assert received == total and event.status == 0
        assert peak <= MIN_WINDOW


async def test_input_credit_is_reported_to_the_reader(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        cmd = await RemoteCommand.start(pair.session, ["cat"], stdin=True)
        await cmd.write(b"x" * 1000)
        assert cmd.input_window == DEFAULT_WINDOW - 1000
        credit = 0
        while credit < 1000:
            event = await asyncio.wait_for(cmd.next_event(), 10)
            if isinstance(event, InputCredit):
                credit += event.bytes
            elif isinstance(event, Output):
                cmd.ack(len(event.data))
        assert cmd.input_window == DEFAULT_WINDOW
        cmd.close_input()
        await collect(cmd)


# Section: cancellation and timeouts


async def test_cancel_interrupts_the_process_group(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        cmd = await RemoteCommand.start(
            pair.session, ["sh", "-c", "sleep 300 & echo $$ $!; wait"])
        pids = [int(p) for p in (await first_line(cmd)).split()]
        assert all(alive(p) for p in pids)
        await cmd.signal("INT")
        _, _, ended = await collect(cmd)
        assert ended.reason == "cancelled" and ended.signal in (2, 9)
        # the background sleep ignores SIGINT (POSIX, for '&' jobs): the
        # SIGKILL after kill_grace ends it
        await eventually(lambda: not any(alive(p) for p in pids), timeout=10)


async def test_a_process_that_ignores_sigint_is_killed_after_the_grace_time(short_tmp):
    async with host_guest_pair(short_tmp, config=config(kill_grace=0.5)) as pair:
        code = ("import os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "print(os.getpid(), flush=True)\ntime.sleep(300)")
        cmd = await RemoteCommand.start(pair.session, [PY, "-c", code])
        pid = int(await first_line(cmd))
        started = asyncio.get_running_loop().time()
        await cmd.signal("INT")
        _, _, ended = await collect(cmd)
        assert (ended.reason, ended.signal, ended.status) == ("cancelled", 9, 137)
        assert asyncio.get_running_loop().time() - started >= 0.4
        assert not alive(pid)


async def test_timeout_kills_the_process_group(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        started = asyncio.get_running_loop().time()
        cmd = await RemoteCommand.start(
            pair.session, ["sh", "-c", "sleep 300 & echo $$ $!; wait"], timeout=0.5)
        pids = [int(p) for p in (await first_line(cmd)).split()]
        _, _, ended = await collect(cmd)
        assert ended.reason == "timeout" and ended.signal == 15
        assert 0.4 <= asyncio.get_running_loop().time() - started < 10
        await eventually(lambda: not any(alive(p) for p in pids), timeout=10)


async def test_a_stopped_service_kills_its_commands(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        cmd = await RemoteCommand.start(pair.session, ["sh", "-c", "echo $$; exec sleep 300"])
        pid = int(await first_line(cmd))
        await pair.agent.manager.services["vmsession"].stop()
        _, _, ended = await collect(cmd)
        assert ended.reason == "stopped"
        await eventually(lambda: not alive(pid), timeout=10)


# Section: keepalives and lost peers


async def test_a_quiet_command_is_not_cut_off(short_tmp):
    async with host_guest_pair(short_tmp, config=config(keepalive=0.2)) as pair:
        started = asyncio.get_running_loop().time()
        out, _, ended = await run(pair, ["sh", "-c", "sleep 3; echo done"])
        # 3 s of silence is more than three times the 0.8 s deadline of each side
        assert (out, ended.status) == (b"done\n", 0)
        assert asyncio.get_running_loop().time() - started >= 3


async def test_a_silent_guest_is_detected_and_the_guest_ends_the_orphan(short_tmp):
    async with host_guest_pair(short_tmp, config=config(keepalive=0.2)) as pair:
        agent_notify = pair.agent.ctx.notify

        def without_keepalives(service, op, payload):
            if (service, op) != (ServiceId.VMSESSION, VmSessionOp.KEEPALIVE):
                agent_notify(service, op, payload)

        pair.agent.ctx.notify = without_keepalives  # a guest whose session hangs
        cmd = await RemoteCommand.start(pair.session, ["sh", "-c", "echo $$; exec sleep 300"])
        pid = int(await first_line(cmd))
        started = asyncio.get_running_loop().time()
        with pytest.raises(ChannelError, match="nothing heard from session"):
            await collect(cmd)
        assert asyncio.get_running_loop().time() - started < 10
        # the host's keepalives stopped with it: the guest kills the command
        await eventually(lambda: not alive(pid), timeout=10)


async def test_a_lost_channel_fails_the_command_and_the_guest_kills_it(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        cmd = await RemoteCommand.start(pair.session, ["sh", "-c", "echo $$; exec sleep 300"])
        pid = int(await first_line(cmd))
        pair.session.link.close()
        with pytest.raises(ChannelError, match="channel to the guest closed"):
            await collect(cmd)
        await eventually(lambda: not alive(pid), timeout=10)


async def test_an_abandoned_command_is_killed_and_drained(short_tmp):
    async with host_guest_pair(short_tmp, config=config()) as pair:
        cmd = await RemoteCommand.start(pair.session, ["sh", "-c", "echo $$; yes"],
                                        window=MIN_WINDOW)
        pid = int(await first_line(cmd))
        cmd.abandon()
        await eventually(lambda: cmd.exit is not None, timeout=10)
        assert cmd.exit.signal == 9 and not alive(pid)
        assert not pair.agent.manager.services["vmsession"].sessions


# Section: logging


async def test_both_sides_log_who_what_and_how_it_ended_without_env_values(short_tmp, caplog):
    caplog.set_level(logging.INFO)
    async with host_guest_pair(short_tmp, config=config()) as pair:
        await run(pair, ["sh", "-c", "exit 4"], env={"TOKEN": "s3cr3t-value"},
                  requested_by="alice")
    guest = [r.getMessage() for r in caplog.records if r.name == "vmis.guest.vmsession"]
    host = [r.getMessage() for r in caplog.records if r.name == "vmis.host.DemoVM"]
    started = next(m for m in guest if "started" in m)
    assert "VM DemoVM" in started and "requested by alice" in started
    assert "sh -c 'exit 4'" in started and "env TOKEN" in started
    assert any("ended: exited, exit code 4" in m for m in guest)
    assert any("requested by alice: started sh -c 'exit 4'" in m for m in host)
    assert any("ended: exited, exit code 4" in m for m in host)
    assert not any("s3cr3t-value" in r.getMessage() for r in caplog.records)
