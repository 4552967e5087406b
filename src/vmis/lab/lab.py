"""The lab directory and what runs from it: the host manager and the lab VMs.

:class:`Lab` starts, finds and stops them (``vmis lab up|down|status|guest``);
:func:`run_lab_up` is ``vmis lab up`` from the host manager to the VMs' heartbeats.
The layout of the directory is in :mod:`vmis.lab`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmis.api.client import ApiClient, api_path, default_lab_dir
from vmis.errors import ConnectError, NotFoundError, StateError, VmisError
from vmis.host.private import private_dir, write_private
from vmis.host.vmname import check_vm_name
from vmis.lab.processes import (
    how_it_ended,
    log_hint,
    pid_alive,
    read_pid,
    spawn,
    stop_pid,
    wait_for,
)
from vmis.lab.sandbox import Sandbox, check_host

__all__ = ["START_TIMEOUT", "Lab", "LabVm", "run_lab_up"]

#: seconds to wait for a process to come up
START_TIMEOUT = 20.0
#: how host serve logs its TCP listener (vmis.api.server)
_API_URL = re.compile(r"API on (http://\S+)")


@dataclass
class LabVm:
    """One lab VM's directory and process."""

    name: str
    dir: Path

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def channel_path(self) -> Path:
        return self.root / "run/vmis/channel.sock"

    @property
    def pid_file(self) -> Path:
        return self.dir / "agent.pid"

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"

    @property
    def is_qemu(self) -> bool:
        """Whether this lab VM is a QEMU virtual machine (vmis.lab.qemuvm)."""
        from vmis.lab.qemuvm import is_qemu_dir

        return is_qemu_dir(self.dir)

    @property
    def pid(self) -> int | None:
        """The agent process of a process lab VM, QEMU's of a QEMU lab VM; None if not running."""
        if self.is_qemu:
            from vmis.qemu.machine import QemuMachine

            return QemuMachine.attach(self.dir).pid
        pid = read_pid(self.pid_file)
        return pid if pid_alive(pid) else None

    def status(self) -> dict[str, Any]:
        """Name, agent pid (or QEMU pid), root directory, running or not."""
        pid = self.pid
        if self.is_qemu:
            from vmis.qemu.cmdline import MachinePaths

            paths = MachinePaths(self.dir)
            return {"Name": self.name, "Kind": "qemu", "Pid": pid, "QemuPid": pid,
                    "Root": str(self.dir), "Running": pid is not None,
                    "Log": str(paths.console), "Channel": f"unix:{paths.channel}",
                    "Qmp": str(paths.qmp)}
        return {"Name": self.name, "Kind": "process", "Pid": pid, "Root": str(self.root),
                "Running": pid is not None, "Log": str(self.log)}


class Lab:
    """The lab directory and what runs from it."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = (directory or default_lab_dir()).absolute()

    # Section: host manager

    @property
    def socket(self) -> Path:
        return self.dir / "host.sock"

    def api(self) -> ApiClient:
        return ApiClient(self.socket)

    def host_pid(self) -> int | None:
        pid = read_pid(self.dir / "host.pid")
        return pid if pid_alive(pid) else None

    def _host_answers(self) -> bool:
        try:
            with self.api() as api:
                api.call("GET", "/ping", timeout=2)
            return True
        except ConnectError:
            return False

    @property
    def fleet_file(self) -> Path:
        """The lab's fleet settings, when its manager joins a fleet (no password in it)."""
        return self.dir / "fleet.json"

    def fleet(self) -> dict[str, str]:
        """``{"Db", "ComputerName"}`` of a lab whose manager joins a fleet, else ``{}``."""
        try:
            settings = json.loads(self.fleet_file.read_text())
        except (OSError, ValueError):
            return {}
        return settings if isinstance(settings, dict) else {}

    def ensure_host(self, db: str | None = None, computer: str | None = None) -> int:
        """Start the lab's host manager unless one answers; return its pid.

        :param db: the store: a fleet's PostgreSQL URL (docs/fleet.md); default the
            lab's own SQLite file, or the fleet this lab joined before.
        :param computer: this host's name in the fleet (default the machine's).
        :raise StateError: When the running manager has another store or name, or
            the manager could not start (a host of that name runs, say).
        """
        private_dir(self.dir)
        saved = self.fleet()
        if db is None and computer is None:
            db, computer = saved.get("Db"), saved.get("ComputerName")
        elif db is None:
            db = saved.get("Db")
        pid = self.host_pid()
        if pid and self._host_answers():
            self._check_host(db, computer)
            return pid
        stop_pid(pid)
        log = self.dir / "host.log"
        # the API on a free loopback port too: the web console's (lab status's ConsoleUrl)
        argv = [sys.executable, "-m", "vmis.cli.host", "host", "serve",
                "-Socket", str(self.socket), "-Listen", "127.0.0.1:0"]
        if computer:
            argv += ["-ComputerName", computer]
        # The URL goes in the environment, never in argv: a password there would be in
        # the process list for every user; the file keeps the URL without it.
        env = dict(os.environ, VMIS_DB=db or f"sqlite:///{self.dir / 'host.db'}",
                   VMIS_DATA_DIR=str(self.dir))
        if db:
            write_private(self.fleet_file, json.dumps(
                {"Db": without_password(db), "ComputerName": computer or ""}) + "\n")
        else:
            self.fleet_file.unlink(missing_ok=True)
        logged = log.stat().st_size if log.exists() else 0
        self.console_file.unlink(missing_ok=True)
        process = spawn(argv, log, env=env)
        write_private(self.dir / "host.pid", f"{process.pid}\n")
        wait_for(lambda: self._host_answers() or process.poll() is not None, START_TIMEOUT,
                 "the lab host manager", log)
        code = process.poll()
        if code is not None:
            raise StateError(f"the lab host manager exited at start ({how_it_ended(code)})"
                             f"{log_hint(log)}")
        with log.open("rb") as text:
            text.seek(logged)
            found = _API_URL.search(text.read().decode(errors="replace"))
        if found:
            write_private(self.console_file, found[1] + "/\n")
        return process.pid

    @property
    def console_file(self) -> Path:
        """Where the lab keeps its manager's console URL (its port is chosen at start)."""
        return self.dir / "console.url"

    def console_url(self) -> str | None:
        """The web console of the lab's running manager (docs/console.md), if any."""
        if self.host_pid() is None:
            return None
        try:
            return self.console_file.read_text().strip() or None
        except OSError:
            return None

    def _check_host(self, db: str | None, computer: str | None) -> None:
        with self.api() as api:
            running = api.call("GET", "/host")
        if computer and running["ComputerName"].lower() != computer.lower():
            raise StateError(f"the lab's host manager runs as host {running['ComputerName']}, "
                             f"not {computer}: vmis lab down first")
        if db and without_password(db) != without_password(running["Database"]):
            raise StateError(f"the lab's host manager runs on {running['Database']}, not on "
                             f"that database: vmis lab down first")

    # Section: lab VMs

    def vm(self, name: str) -> LabVm:
        return LabVm(name, self.dir / "vms" / name)

    def vms(self) -> list[LabVm]:
        base = self.dir / "vms"
        if not base.is_dir():
            return []
        return [self.vm(p.name) for p in sorted(base.iterdir()) if p.is_dir()]

    def _write_config(self, vm: LabVm) -> None:
        # The directories every Linux root has, where copies may go
        # (docs/services/fcopy.md §5: allowed roots that exist).
        for directory in ("tmp", "var/tmp", "home", "root", "srv", "opt"):
            (vm.root / directory).mkdir(parents=True, exist_ok=True)
        conf = vm.root / "etc/vmis/agent.conf"
        if conf.exists():
            return
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# lab VM: every path below resolves inside this root directory\n"
            "[agent]\nchannel = unix:/run/vmis/channel.sock\nadapters = fake\n"
            "\n[heartbeat]\nhealth_interval = 1\nhealth_timeout = 5\n"
        )

    def _named(self, name: str) -> LabVm:
        # before anything starts: a name the host manager refuses leaves nothing running
        return self.vm(check_vm_name(name))

    def _claim(self, name: str) -> None:
        """Make sure *name* is free or a lab VM of this lab's host before the lab touches
        anything.

        :raise StateError: When the host has a VM of that name that is not a lab
            VM (``lab up`` would re-point its channel), or another host of the
            fleet has one (docs/fleet.md).
        """
        with self.api() as api:
            registered = api.call("GET", "/vms", params={"computer": "*"})
            host = api.call("GET", "/host")["ComputerName"]
        for vm in registered:
            if vm["Name"].lower() != name.lower():
                continue
            if vm["ComputerName"].lower() != host.lower():
                raise StateError(
                    f"{vm['Name']} is registered on host {vm['ComputerName']}; it was left "
                    f"as it is: choose another name, or Move-VM {vm['Name']} to host "
                    f"{host} first")
            if vm["Kind"] != "lab":
                raise StateError(
                    f"{vm['Name']} is registered as a VM of kind {vm['Kind']} (channel "
                    f"{vm['Channel']}), not a lab VM; it was left as it is: choose another "
                    f"name, or unregister it first (vmis vm remove {vm['Name']})")

    def _register(self, name: str, where: dict[str, str]) -> None:
        """Register a lab VM with the host (or update where it is) and dial it now.

        :raise StateError: When another host registered the name first (a race
            :meth:`_claim` cannot see).
        """
        with self.api() as api:
            here = {vm["Name"].lower() for vm in api.call("GET", "/vms")}
            if name.lower() in here:
                api.call("PATCH", api_path("vms", name), json=where)
            else:
                api.call("POST", "/vms", json={"name": name, "kind": "lab", **where})
            api.call("POST", api_path("vms", name, "reconnect"))

    def start_vm(self, name: str, clock_offset: float | None = None,
                 agent_bundle: Path | None = None) -> LabVm:
        """Start a lab VM's agent unless it runs; register it with the host.

        A new lab VM gets the agent installed into its root as a user installs
        it (vmis.packaging.install), from this vmis or from *agent_bundle*; an
        existing one keeps the agent it has (update it with
        Update-VMIntegrationServices, or give *agent_bundle* to reinstall).
        """
        vm = self._named(name)
        if vm.is_qemu:
            raise StateError(f"{name} is a QEMU lab VM: vmis lab up {name} -Qemu")
        check_host(self.dir)
        self._claim(name)
        private_dir(vm.dir.parent)
        private_dir(vm.dir)
        self._write_config(vm)
        Sandbox(vm.root, name).prepare()
        if agent_bundle is not None or not (vm.root / "usr/lib/vmis/vmis-guest.pyz").exists():
            self._install(vm, agent_bundle)
        if clock_offset is not None:
            clock = vm.root / "var/lib/vmis/clock.json"
            clock.parent.mkdir(parents=True, exist_ok=True)
            clock.write_text(json.dumps({"offset_ns": int(clock_offset * 1e9)}))
        if vm.pid is None:
            with contextlib.suppress(FileNotFoundError):
                (vm.root / "var/lib/vmis/power.json").unlink()
            with contextlib.suppress(FileNotFoundError):
                vm.channel_path.unlink()
            vm.pid_file.unlink(missing_ok=True)
            argv = [sys.executable, "-m", "vmis.lab.vmproc", str(vm.root), str(vm.pid_file),
                    name]
            supervisor = spawn(argv, vm.log)
            write_private(vm.dir / "init.pid", f"{supervisor.pid}\n")
            # Our own child: poll() knows for sure, where /proc can be caught mid-exec.
            wait_for(lambda: (vm.channel_path.is_socket() and vm.pid is not None)
                     or supervisor.poll() is not None, START_TIMEOUT, f"lab VM {name}", vm.log)
            code = supervisor.poll()
            if code is not None:
                raise StateError(f"lab VM {name} exited at start ({how_it_ended(code)})"
                                 f"{log_hint(vm.log)}")
        self._register(name, {"channel": f"unix:{vm.channel_path}"})
        return vm

    def start_qemu_vm(self, name: str, *, image: Path | None = None,
                      clock_offset: float | None = None, memory_mib: int | None = None,
                      cpus: int | None = None) -> LabVm:
        """Boot a QEMU lab VM from the project's guest image (or *image*, a built image's
        directory) unless it runs; register it with the host, with its QMP socket.

        :raise StateError: When the name belongs to a process lab VM.
        """
        from vmis.lab.qemuvm import boot_machine
        from vmis.qemu.image.guest_image import GuestImage

        vm = self._named(name)
        self._claim(name)
        guest_image = GuestImage.load(image) if image is not None else None
        machine = boot_machine(name, vm.dir, image=guest_image, clock_offset=clock_offset,
                               memory_mib=memory_mib, cpus=cpus)
        self._register(name, {"channel": f"unix:{machine.paths.channel}",
                              "qmp": str(machine.paths.qmp)})
        return vm

    @staticmethod
    def _install(vm: LabVm, bundle: Path | None) -> None:
        from vmis.packaging.bundle import bundle_version
        from vmis.packaging.install import install_agent

        if bundle is None:
            install_agent(vm.root)
            return
        try:
            data = bundle.read_bytes()
            version = bundle_version(data)
        except (OSError, ValueError) as exc:
            raise StateError(f"{bundle}: {exc}") from None
        install_agent(vm.root, data, version)

    def wait_ready(self, names: list[str], timeout: float = START_TIMEOUT) -> None:
        """Wait until every named VM's heartbeat is OK."""
        def ready() -> bool:
            with self.api() as api:
                vms = {v["Name"]: v for v in api.call("GET", "/vms")}
            return all(vms.get(n, {}).get("Heartbeat") == "Ok" for n in names)

        wait_for(ready, timeout, f"the heartbeat of {', '.join(names)}", self.dir / "host.log")

    def stop_vm(self, name: str) -> bool:
        """Stop a lab VM's agent (SIGTERM, through its init); True if it was running."""
        vm = self.vm(name)
        if not vm.dir.is_dir():
            raise NotFoundError(f"no lab VM named {name!r}")
        if vm.is_qemu:
            from vmis.lab.qemuvm import stop_machine

            return stop_machine(vm.dir)
        ran = stop_pid(read_pid(vm.dir / "init.pid"))
        return stop_pid(read_pid(vm.pid_file)) or ran

    def down(self, names: list[str] | None) -> list[str]:
        """Stop the named lab VMs, or all of them and the host manager.

        Without names, QEMU VMs the lab's host manager launched (``vmis vm
        create`` and Start-VM, in ``<lab>/machines``) are powered off too.
        """
        targets = names or [vm.name for vm in self.vms()]
        stopped = [n for n in targets if self.stop_vm(n)]
        if not names:
            from vmis.lab.qemuvm import is_qemu_dir, stop_machine

            machines = self.dir / "machines"
            for directory in sorted(machines.iterdir()) if machines.is_dir() else []:
                if is_qemu_dir(directory) and stop_machine(directory):
                    stopped.append(directory.name)
            stop_pid(read_pid(self.dir / "host.pid"))
        return stopped

    def status(self) -> dict[str, Any]:
        """The host manager and every lab VM, for ``lab status``."""
        fleet = self.fleet()
        return {"Directory": str(self.dir), "HostPid": self.host_pid(),
                "HostSocket": str(self.socket), "ConsoleUrl": self.console_url(),
                "Database": fleet.get("Db"),
                "ComputerName": fleet.get("ComputerName") or None,
                "VMs": [vm.status() for vm in self.vms()]}

    def guest_root(self, name: str) -> Path:
        """The root directory of a lab VM, where ``vmis-guest --root`` acts as inside it.

        :raise StateError: For a QEMU lab VM (its agent runs inside the guest).
        :raise NotFoundError: For a lab VM that is not up.
        """
        vm = self.vm(name)
        if vm.is_qemu:
            raise StateError(f"lab VM {name} is a QEMU VM: its agent runs inside the guest; "
                             f"use vmis Invoke-Command -VMName {name} -- COMMAND")
        if not vm.root.is_dir():
            raise NotFoundError(f"no lab VM named {name!r} (start it with 'vmis lab up {name}')")
        return vm.root


def without_password(url: str) -> str:
    """*url* with any password left out (the lab keeps its fleet's URL in a file)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        # (URL.set takes None for "unchanged": the tuple's own _replace removes it)
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except (ArgumentError, ValueError):
        return url


def run_lab_up(lab: Lab, names: list[str], clock_offset: float | None,
               timeout: float | None = None, agent_bundle: Path | None = None, *,
               qemu: bool = False, image: Path | None = None,
               memory_mib: int | None = None, db: str | None = None,
               computer: str | None = None) -> list[LabVm]:
    """``vmis lab up``: host manager, then each VM, then wait for heartbeats.

    :param qemu: boot real QEMU VMs from the project's guest image (or *image*)
        instead of agent processes; their heartbeat gets a longer wait
        (:data:`vmis.lab.qemuvm.BOOT_TIMEOUT`) since the guest boots first.
    :param db: a fleet's store, and *computer* this lab's host name in it
        (:meth:`Lab.ensure_host`).
    """
    for name in names:  # before anything starts: a refused name leaves nothing running
        check_vm_name(name)
    lab.ensure_host(db, computer)
    if qemu:
        from vmis.lab.qemuvm import BOOT_TIMEOUT

        if agent_bundle is not None:
            raise StateError("-AgentBundle is for process lab VMs; a QEMU lab VM runs the agent "
                             "of its image (update it with Update-VMIntegrationServices)")
        vms = [lab.start_qemu_vm(name, image=image, clock_offset=clock_offset,
                                 memory_mib=memory_mib) for name in names]
        wait = timeout or BOOT_TIMEOUT
    else:
        vms = [lab.start_vm(name, clock_offset, agent_bundle) for name in names]
        wait = timeout or START_TIMEOUT
    try:
        lab.wait_ready(names, wait)
    except VmisError as exc:
        logs = ", ".join(vm.status()["Log"] for vm in vms)
        raise StateError(f"{exc}; logs: {logs}") from None
    return vms
