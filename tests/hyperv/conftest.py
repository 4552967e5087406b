"""Fixtures for the Hyper-V daemon tests: the kernel emulator and in-process daemons."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.hv_emulator.kernel import KernelEmulator, ServiceName
from vmis.hyperv.daemon import DaemonRunner, Handler, StopSignal

#: Generous bound for anything timed (2-core loaded CI machines).
WAIT = 20.0


class RunningDaemon:
    """A :class:`DaemonRunner` in a thread."""

    def __init__(self, handler: Handler, device: str, logger: logging.Logger) -> None:
        self.handler = handler
        self.stop = StopSignal()
        self.status: int | None = None
        self._runner = DaemonRunner(handler, device, self.stop, logger)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.status = self._runner.run()

    def shutdown(self) -> int | None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "daemon thread did not stop"
        self.stop.close()
        return self.status


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("vmis.hyperv.test")
    log.setLevel(logging.DEBUG)
    return log


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Callable[..., KernelEmulator]]:
    started: list[KernelEmulator] = []

    def make(service: ServiceName, **kwargs: float) -> KernelEmulator:
        emu = KernelEmulator(service, tmp_path / f"{service}.sock", **kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.close()


@pytest.fixture
def daemon(logger: logging.Logger) -> Iterator[Callable[[Handler, KernelEmulator], RunningDaemon]]:
    running: list[RunningDaemon] = []

    def start(handler: Handler, emu: KernelEmulator, register: bool = True,
              log: logging.Logger | None = None) -> RunningDaemon:
        d = RunningDaemon(handler, str(emu.path), log or logger)
        running.append(d)
        if register:
            assert emu.wait_registered(WAIT), "daemon did not register"
        return d

    yield start
    for d in running:
        d.shutdown()
