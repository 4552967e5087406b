"""Run the external programs of an image build, with one log file per build.

Every step's output goes to the build log, never to the caller's terminal; a
failing step raises :class:`~vmis.errors.ImageBuildError` naming the step
and the log, which is the one line an administrator needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from vmis.errors import ImageBuildError

__all__ = ["BuildLog", "require_tools"]


def require_tools(tools: Mapping[str, str]) -> None:
    """Check that build tools are on ``PATH`` (``/usr/sbin`` and ``/sbin`` included).

    :param tools: program name -> Debian package that provides it.
    :raise ImageBuildError: When one is missing; the message names the packages to install.
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = sorted({pkg for prog, pkg in tools.items() if shutil.which(prog, path=path) is None})
    if missing:
        raise ImageBuildError(
            "check tools",
            "missing programs; install them with: apt-get install -y "
            f"--no-install-recommends {' '.join(missing)} (see dev/apt-packages-vm.txt)",
        )


class BuildLog:
    """A build's log file and the runner of its steps.

    Use as a context manager; :meth:`run` appends each command and its output.
    """

    def __init__(self, path: Path) -> None:
        #: the log file
        self.path = path
        self._file: IO[str] | None = None
        self._started = time.monotonic()
        #: seconds taken by each step, in order
        self.timings: dict[str, float] = {}

    def __enter__(self) -> BuildLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.note(f"FAILED: {exc}")
        if self._file is not None:
            self._file.close()
            self._file = None

    def note(self, text: str) -> None:
        """Append a line to the log, stamped with seconds since the build started."""
        if self._file is not None:
            self._file.write(f"[{time.monotonic() - self._started:8.2f}] {text}\n")
            self._file.flush()

    def fail(self, step: str, reason: str) -> ImageBuildError:
        """Build (not raise) the error for a failed step, pointing at this log."""
        return ImageBuildError(step, reason, self.path)

    def run(
        self,
        step: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float,
        cwd: Path | None = None,
        stdout: IO[bytes] | None = None,
    ) -> None:
        """Run one command of a step, its output appended to the log.

        :param step: short name of the step, for the log and the error.
        :param argv: the command.
        :param timeout: seconds before the command is killed and the step fails.
        :param cwd: working directory.
        :param stdout: a binary file for the command's standard output (the log if ``None``).
        :raise ImageBuildError: When the command is missing, fails or times out.
        """
        if self._file is None:
            raise RuntimeError("BuildLog.run() outside its 'with' block")
        words = [os.fspath(a) for a in argv]
        self.note(f"{step}: $ {' '.join(words)}")
        begin = time.monotonic()
        env = dict(os.environ, LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
        try:
            proc = subprocess.run(
                words,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else self._file,
                stderr=self._file,
                env=env,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as err:
            raise self.fail(step, f"program not found: {words[0]}") from err
        except subprocess.TimeoutExpired as err:
            raise self.fail(step, f"{words[0]} did not finish within {timeout:.0f} s") from err
        finally:
            elapsed = time.monotonic() - begin
            self.timings[step] = self.timings.get(step, 0.0) + elapsed
        self.note(f"{step}: exit status {proc.returncode} after {elapsed:.1f} s")
        if proc.returncode != 0:
            raise self.fail(step, f"{words[0]} exited with status {proc.returncode}")

    def timed(self, step: str, seconds: float) -> None:
        """Record the duration of a step that ran in Python."""
        self.timings[step] = self.timings.get(step, 0.0) + seconds
        self.note(f"{step}: done in {seconds:.1f} s")
