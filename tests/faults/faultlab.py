"""A lab to break: kill its processes with SIGKILL, start them again, read the guests' state.

Everything here acts on real processes (the host manager and the lab VMs'
agents, vmis.lab.lab) and reads what a guest keeps in its root directory,
as another process would: its files, its pool files, the lab freezer's
state (``run/vmis/freezer.json``, the fake kernel's freeze state).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.lab import run_vmis

from vmis.api.client import ApiClient
from vmis.errors import VmisError
from vmis.lab.lab import Lab
from vmis.lab.processes import pid_alive

__all__ = ["Background", "FaultLab", "sha256_of", "wait_for"]


def wait_for(check: Callable[[], Any], timeout: float, what: str = "",
             interval: float = 0.05) -> Any:
    """Poll *check* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what or check}"
        time.sleep(interval)
    return result


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Background:
    """An API call in a thread: what it returned, or the error it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> Background:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the call did not end within {timeout} s"
        return self


class FaultLab:
    """A running lab and the faults one can do to it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def call(self, method: str, path: str, json: Any = None, timeout: float = 120,
             **params: Any) -> Any:
        with ApiClient(self.lab.socket) as api:
            return api.call(method, path, json=json, params=params or None, timeout=timeout)

    def background(self, method: str, path: str, json: Any = None,
                   timeout: float = 300) -> Background:
        return Background(lambda: self.call(method, path, json, timeout))

    def root(self, vm: str = "DemoVM") -> Path:
        return self.lab.vm(vm).root

    # Section: processes

    def agent_pid(self, vm: str = "DemoVM") -> int:
        pid = self.lab.vm(vm).pid
        assert pid is not None, f"{vm}'s agent is not running"
        return pid

    def kill_agent(self, vm: str = "DemoVM") -> None:
        """SIGKILL the agent, as the OOM killer or a crash would end it (no clean-up)."""
        self._kill(self.agent_pid(vm))

    def kill_manager(self) -> None:
        pid = self.lab.host_pid()
        assert pid is not None, "the host manager is not running"
        self._kill(pid)

    @staticmethod
    def _kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 10, f"pid {pid} to end")

    def start_agent(self, vm: str = "DemoVM") -> float:
        """``vmis lab up VM`` (waits for its heartbeat); the monotonic time it returned."""
        result = run_vmis(self.lab.dir, "lab", "up", vm)
        assert result.code == 0, result.err
        return time.monotonic()

    def start_manager(self) -> None:
        self.lab.ensure_host()

    # Section: what the guest and the host show

    def frozen(self, vm: str = "DemoVM") -> list[str]:
        """The mount points the lab VM's (fake) kernel holds frozen."""
        state = self.root(vm) / "run/vmis/freezer.json"
        with contextlib.suppress(FileNotFoundError):
            return list(json.loads(state.read_text())["frozen"])
        return []

    def services(self, vm: str = "DemoVM") -> dict[str, dict[str, Any]]:
        rows = self.call("GET", "/services", vm=[vm])
        return {r["Name"]: r for r in rows}

    def heartbeat_ok(self, vm: str = "DemoVM") -> bool:
        try:
            vms = {v["Name"]: v for v in self.call("GET", "/vms", timeout=10)}
        except VmisError:
            return False
        return vms.get(vm, {}).get("Heartbeat") == "Ok"
