"""Freeze hooks: executables run around a freeze, as open-vm-tools' backupScripts.d.

The contract (docs/services/vss.md §3):

- every executable regular file in the hooks directory, except dotfiles and
  package-manager leftovers (``*~``, ``*.dpkg-*``, ``*.rpmnew`` ...), is a hook;
- each runs with one argument, the phase: ``freeze`` in name order before
  the filesystems are frozen, ``thaw`` in reverse order after the thaw,
  ``freezefail`` in reverse order when the freeze failed;
- it runs in its own process group with stdin from ``/dev/null``; its stdout
  and stderr go to memory (the last :data:`OUTPUT_LIMIT` bytes are kept), never to a
  file, so nothing a hook prints can block on a frozen filesystem;
- a hook that exits non-zero, cannot be started or outlives its timeout
  (then its whole process group is killed) has failed.

Nothing here logs: results carry everything worth saying after the thaw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "OUTPUT_LIMIT",
    "HookResult",
    "ProcessResult",
    "list_hooks",
    "run_hook",
    "run_hooks",
    "run_process",
]

#: bytes of a hook's output kept (the end of it)
OUTPUT_LIMIT = 16 * 1024
#: seconds to wait for the output pipe after the hook exited (a daemon it
#: started may hold the pipe open forever)
_PIPE_GRACE = 0.5
_LEFTOVER_SUFFIXES = ("~", ".rpmsave", ".rpmnew", ".rpmorig", ".swp", ".disabled")


@dataclass(frozen=True, slots=True)
class HookResult:
    """What one run of one hook did."""

    #: the hook's file name
    name: str
    #: ``freeze``, ``freezefail`` or ``thaw``
    phase: str
    #: ``ok``, ``failed`` (non-zero exit), ``timeout`` or ``error`` (could not start)
    result: str
    #: exit status; negative for a signal; None when it never ran or was killed
    exit: int | None
    #: seconds from start to end
    duration: float
    #: the end of its stdout and stderr, decoded leniently
    output: str

    @property
    def ok(self) -> bool:
        """True if the hook exited 0 in time."""
        return self.result == "ok"

    def summary(self) -> str:
        """One line: name, phase and what happened."""
        if self.result == "ok":
            return f"{self.name} {self.phase}: ok"
        if self.result == "failed":
            how = f"exit {self.exit}" if self.exit is not None and self.exit >= 0 \
                else f"signal {-(self.exit or 0)}"
        elif self.result == "timeout":
            how = f"killed after {self.duration:.1f} s (timeout)"
        else:
            how = "could not be started"
        last = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        return f"{self.name} {self.phase}: {how}" + (f": {last[0][:200]}" if last else "")

    def to_json(self) -> dict[str, Any]:
        """The wire form (docs/services/vss.md §1.1)."""
        return {"name": self.name, "phase": self.phase, "result": self.result,
                "exit": self.exit, "duration_ms": round(self.duration * 1000, 1),
                "output": self.output}


def _is_hook(path: Path) -> bool:
    name = path.name
    if name.startswith(".") or name.endswith(_LEFTOVER_SUFFIXES) or ".dpkg-" in name:
        return False
    return path.is_file() and os.access(path, os.X_OK)


def list_hooks(directory: Path) -> list[Path]:
    """The hooks in *directory*, in name order (bytes of the name); none if it is absent."""
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((p for p in entries if _is_hook(p)), key=lambda p: os.fsencode(p.name))


async def _read_tail(stream: asyncio.StreamReader, kept: bytearray, limit: int) -> None:
    # Into the caller's buffer, so what was read survives a cancellation.
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > limit:
            del kept[: len(kept) - limit]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What one bounded run of a program did (a hook, the host's snapshot command)."""

    #: ``ok``, ``failed`` (non-zero exit), ``timeout`` or ``error`` (could not start)
    result: str
    #: exit status; negative for a signal; None when it never ran or was killed
    exit: int | None
    #: seconds from start to end
    duration: float
    #: the end of its stdout and stderr, decoded leniently
    output: str


async def _pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=OUTPUT_LIMIT, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    return reader, transport


async def run_process(argv: Sequence[str], *, timeout: float, cwd: Path | None,
                      env: Mapping[str, str]) -> ProcessResult:
    """Run a program in its own process group, output to memory, with a timeout.

    :param timeout: seconds before its process group is killed.
    :param cwd: its working directory.
    :param env: variables added to this process's environment.
    :return: the result; this never raises for the program's failure. If the
        caller is cancelled, the process group is killed first.
    """
    start = time.monotonic()
    # Our own pipe rather than asyncio's: Process.wait() would also wait for
    # asyncio's pipes to close, which a daemon started by a hook may never do.
    rfd, wfd = os.pipe()
    try:
        stream, transport = await _pipe_reader(rfd)
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        raise
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=wfd, stderr=wfd, cwd=cwd,
            env={**os.environ, **env}, start_new_session=True,
        )
    except OSError as exc:
        transport.close()
        return ProcessResult("error", None, time.monotonic() - start,
                             f"cannot run {argv[0]}: {exc.strerror or exc}")
    except BaseException:
        transport.close()
        raise
    finally:
        os.close(wfd)
    kept = bytearray()
    reader = asyncio.ensure_future(_read_tail(stream, kept, OUTPUT_LIMIT))
    result = "ok"
    try:
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            result = "timeout"
            _kill_group(proc.pid)
            await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), _PIPE_GRACE)
    finally:
        if proc.returncode is None:  # cancelled: leave nothing running
            _kill_group(proc.pid)
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        transport.close()
    code = proc.returncode
    if result == "ok" and code != 0:
        result = "failed"
    return ProcessResult(result, None if result == "timeout" else code,
                         time.monotonic() - start, kept.decode("utf-8", "replace"))


async def run_hook(path: Path, phase: str, *, timeout: float, cwd: Path,
                   env: Mapping[str, str]) -> HookResult:
    """Run one hook with *phase* as its argument (see :func:`run_process`)."""
    done = await run_process([str(path), phase], timeout=timeout, cwd=cwd, env=env)
    return HookResult(path.name, phase, done.result, done.exit, done.duration, done.output)


async def run_hooks(hooks: Sequence[Path], phase: str, *, timeout: float, cwd: Path,
                    env: Mapping[str, str], stop_on_failure: bool = False) -> list[HookResult]:
    """Run *hooks* one after another, in the order given.

    :param stop_on_failure: stop after the first hook that fails (the
        ``freeze`` phase); otherwise every hook runs (``thaw``, ``freezefail``).
    :return: one result per hook that ran.
    """
    results = []
    for hook in hooks:
        result = await run_hook(hook, phase, timeout=timeout, cwd=cwd, env=env)
        results.append(result)
        if stop_on_failure and not result.ok:
            break
    return results
