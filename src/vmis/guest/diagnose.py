"""``vmis-guest diagnose``: what the article checks by hand, in one command.

On any Linux guest it reports, reading only ``/proc`` and ``/sys`` (under
``-Root``, so tests use fixture trees) and the directories of ``PATH``:

* which integration drivers are present: ``hv_vmbus`` and ``hv_utils``
  (Hyper-V; the article's ``lsmod | grep hv_utils``), ``virtio_console`` and
  ``vsock`` (the vmis channel on KVM/QEMU);
* which daemons run, with their pids (the article's ``ps -ef | grep hv``):
  the C hyperv-daemons and ours, and the vmis agent;
* which are installed on ``PATH`` (the article's ``compgen -c hv_``);
* the integration services versions: vmis's own, and the Hyper-V kernel
  driver's ("3.1", what the KVP daemon reports as IntegrationServicesVersion);
* what is missing, each with a one-line fix.

``-json`` prints the same as one JSON object.  Exit status: 0 when nothing
is missing, 1 when something is, 2 on a usage error.

The daemon table (:data:`DAEMONS`) is data: a new service is one more
:class:`DaemonSpec`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import vmis
from vmis.psargs import Command, Param, pascal_keys, print_json, run_command, run_main

__all__ = [
    "DAEMONS",
    "DRIVERS",
    "DaemonSpec",
    "DriverSpec",
    "Report",
    "diagnose",
    "main",
]

#: The Hyper-V kernel driver's version string (HV_DRV_VERSION), which its KVP
#: daemons report as IntegrationServicesVersion.
HV_DRIVER_VERSION = "3.1"

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """A kernel module to look for."""

    #: module name as in /proc/modules and /sys/module
    name: str
    #: what it is for
    role: str
    #: "hyperv": needed on Hyper-V guests; "channel": one of these carries vmis
    group: str
    #: the fix when it is missing
    fix: str


DRIVERS = (
    DriverSpec("hv_vmbus", "Hyper-V VMBus", "hyperv",
               "the kernel lacks Hyper-V support: install a kernel built with CONFIG_HYPERV "
               "(e.g. linux-azure / linux-image-virtual)"),
    DriverSpec("hv_utils", "Hyper-V integration services", "hyperv", "sudo modprobe hv_utils"),
    DriverSpec("virtio_console", "virtio-serial channel for vmis", "channel",
               "sudo modprobe virtio_console"),
    DriverSpec("vsock", "AF_VSOCK channel for vmis", "channel", "sudo modprobe vsock"),
)


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    """A guest daemon: how to recognise it running and installed, how to fix it.

    A process matches when its ``comm`` is one of :attr:`comms` (``comm`` is
    cut to 15 characters by the kernel, so they are compared cut too), or its
    command line contains one of :attr:`cmdline_patterns` (each a sequence of
    arguments that must appear in order, adjacent).
    """

    #: short key ("kvp", "vss", "fcopy", "agent")
    key: str
    #: what the article calls it
    title: str
    #: "hyperv": expected on Hyper-V guests; "vmis": expected where a vmis
    #: channel driver is present
    group: str
    #: process names of implementations (C and ours)
    comms: tuple[str, ...]
    #: argument sequences identifying our implementations
    cmdline_patterns: tuple[tuple[str, ...], ...]
    #: executables that provide it, in order of preference
    executables: tuple[str, ...]
    #: how to start it once installed
    start_fix: str
    #: how to install it
    install_fix: str


DAEMONS = (
    DaemonSpec(
        "kvp", "Key-Value Pair Exchange (Data Exchange)", "hyperv",
        ("hv_kvp_daemon", "vmis-hv-kvp-daemon"),
        (("vmis-guest", "hyperv", "kvp"), ("vmis.hyperv", "kvp"), ("vmis.hyperv.cli", "kvp")),
        ("vmis-hv-kvp-daemon", "hv_kvp_daemon"),
        "sudo systemctl start vmis-hv-kvp (or: sudo vmis-hv-kvp-daemon)",
        "pip install vmis (provides vmis-hv-kvp-daemon), or install hyperv-daemons",
    ),
    DaemonSpec(
        "vss", "VSS (Backup)", "hyperv",
        ("hv_vss_daemon", "vmis-hv-vss-daemon"),
        (("vmis-guest", "hyperv", "vss"), ("vmis.hyperv", "vss"), ("vmis.hyperv.cli", "vss")),
        ("vmis-hv-vss-daemon", "hv_vss_daemon"),
        "sudo systemctl start vmis-hv-vss (or: sudo vmis-hv-vss-daemon)",
        "pip install vmis (provides vmis-hv-vss-daemon), or install hyperv-daemons",
    ),
    DaemonSpec(
        "fcopy", "Guest Service Interface (file copy)", "hyperv",
        ("hv_fcopy_daemon", "hv_fcopy_uio_daemon", "vmis-hv-fcopy-daemon"),
        (("vmis-guest", "hyperv", "fcopy"), ("vmis.hyperv", "fcopy"),
         ("vmis.hyperv.cli", "fcopy")),
        ("vmis-hv-fcopy-daemon", "hv_fcopy_daemon", "hv_fcopy_uio_daemon"),
        "sudo systemctl start vmis-hv-fcopy (or: sudo vmis-hv-fcopy-daemon)",
        "pip install vmis (provides vmis-hv-fcopy-daemon), or install hyperv-daemons",
    ),
    DaemonSpec(
        "agent", "vmis guest agent", "vmis",
        (),
        (("vmis-guest", "run"), ("vmis.cli.guest", "run")),
        ("vmis-guest",),
        "sudo systemctl start vmis-guest (or: sudo vmis-guest run)",
        "pip install vmis (provides vmis-guest)",
    ),
)


@dataclass(slots=True)
class Process:
    """A process seen in /proc."""

    pid: int
    comm: str
    argv: list[str]

    @property
    def label(self) -> str:
        """A short name: the program's base name, or comm."""
        argv = self.argv
        if argv and os.path.basename(argv[0]).startswith("python") and len(argv) > 1:
            # an interpreter: name the script or module and its subcommands
            argv = argv[2:] if argv[1] == "-m" else [os.path.basename(argv[1]), *argv[2:]]
        if not argv:
            return self.comm
        words = [os.path.basename(argv[0])]
        for arg in argv[1:3]:
            if arg.startswith("-"):
                break
            words.append(arg)
        return " ".join(words)


@dataclass(slots=True)
class DriverResult:
    """One driver's verdict."""

    name: str
    role: str
    present: bool
    #: "loaded" (in /proc/modules), "built-in" (only in /sys/module), or ""
    how: str


@dataclass(slots=True)
class DaemonResult:
    """One daemon's verdict."""

    key: str
    title: str
    #: "running", "not running", "not applicable"
    state: str
    #: (pid, label) of each matching process
    processes: list[tuple[int, str]] = field(default_factory=list)
    #: matching executables found on PATH
    installed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Missing:
    """Something missing, with its fix."""

    what: str
    fix: str


@dataclass(slots=True)
class Report:
    """Everything ``diagnose`` found."""

    platform: str
    versions: dict[str, str]
    drivers: list[DriverResult]
    daemons: list[DaemonResult]
    missing: list[Missing]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        """Whether nothing is missing."""
        return not self.missing

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["ok"] = self.ok
        data["daemons"] = [
            {**asdict(d), "processes": [{"pid": p, "name": n} for p, n in d.processes]}
            for d in self.daemons
        ]
        return data


# Section: reading the system


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def loaded_modules(root: Path) -> set[str]:
    """Module names in ``<root>/proc/modules``."""
    return {line.split()[0] for line in _read(root / "proc/modules").splitlines() if line.split()}


def processes(root: Path) -> list[Process]:
    """Every process in ``<root>/proc`` with its comm and argv (kernel threads too)."""
    found = []
    try:
        entries = list((root / "proc").iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        comm = _read(entry / "comm").strip()
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            raw = b""
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if comm or argv:
            found.append(Process(int(entry.name), comm, argv))
    return sorted(found, key=lambda p: p.pid)


def _contains(argv: list[str], pattern: tuple[str, ...]) -> bool:
    names = [os.path.basename(a) for a in argv]
    n = len(pattern)
    return any(names[i : i + n] == list(pattern) or argv[i : i + n] == list(pattern)
               for i in range(len(argv) - n + 1))


def matches(spec: DaemonSpec, proc: Process) -> bool:
    """Whether ``proc`` is an implementation of ``spec``."""
    if proc.comm and proc.comm in {c[:15] for c in spec.comms}:
        return True
    if proc.argv and os.path.basename(proc.argv[0]) in spec.comms:
        return True
    return any(_contains(proc.argv, p) for p in spec.cmdline_patterns)


def on_path(root: Path, path: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are executables in a ``PATH`` directory (under ``root``)."""
    found = []
    for name in names:
        for directory in path.split(":"):
            if not directory:
                continue
            candidate = root / directory.lstrip("/") / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found.append(str(Path("/") / directory.lstrip("/") / name))
                break
    return found


# Section: the verdicts


def diagnose(root: Path = Path("/"), path: str | None = None) -> Report:
    """Inspect the guest under ``root``.

    :param root: where ``/proc``, ``/sys`` and the ``PATH`` directories are.
    :param path: the ``PATH`` to search (default: this process's, or a standard one).
    :return: the report.
    """
    search = path if path is not None else os.environ.get("PATH") or _DEFAULT_PATH
    modules = loaded_modules(root)
    drivers = []
    for d in DRIVERS:
        loaded = d.name in modules
        builtin = not loaded and (root / "sys/module" / d.name).is_dir()
        drivers.append(DriverResult(d.name, d.role, loaded or builtin,
                                    "loaded" if loaded else "built-in" if builtin else ""))
    present = {d.name for d in drivers if d.present}
    vendor = _read(root / "sys/class/dmi/id/sys_vendor").strip()
    hyperv = "hv_vmbus" in present or (root / "sys/bus/vmbus").is_dir() or \
        vendor == "Microsoft Corporation"
    channel = bool(present & {"virtio_console", "vsock"})
    platform = "Hyper-V" if hyperv else "virtio (KVM/QEMU)" if channel else "unknown"

    versions = {"vmis": vmis.__version__}
    if "hv_utils" in present:
        versions["hyperv_driver"] = HV_DRIVER_VERSION
    release = _read(root / "proc/sys/kernel/osrelease").strip()
    if release:
        versions["kernel"] = release

    missing: list[Missing] = []
    warnings: list[str] = []
    if hyperv:
        for driver in DRIVERS:
            if driver.group == "hyperv" and driver.name not in present:
                missing.append(Missing(f"driver {driver.name}", driver.fix))

    procs = processes(root)
    daemons = []
    for spec in DAEMONS:
        running = [(p.pid, p.label) for p in procs if matches(spec, p)]
        installed = on_path(root, search, spec.executables)
        applicable = hyperv if spec.group == "hyperv" else channel or bool(running)
        state = "running" if running else "not running" if applicable else "not applicable"
        daemons.append(DaemonResult(spec.key, spec.title, state, running, installed))
        if applicable and not running:
            fix = spec.start_fix if installed else spec.install_fix
            missing.append(Missing(f"{spec.title} daemon not running", fix))
        if spec.group == "hyperv" and len(running) > 1:
            warnings.append(
                f"{spec.title}: {len(running)} daemons running "
                f"({', '.join(f'{n} pid {p}' for p, n in running)}); only one can hold the "
                "device: stop the others"
            )
    if not hyperv and not channel:
        missing.append(Missing("a host-guest channel driver",
                               "sudo modprobe virtio_console (or: sudo modprobe vsock)"))
    return Report(platform, versions, drivers, daemons, missing, warnings)


# Section: output


def render(report: Report) -> str:
    """The report as text, one item per line."""
    lines = [f"Platform: {report.platform}"]
    version = f"vmis {report.versions['vmis']}"
    if "hyperv_driver" in report.versions:
        version += f"; Hyper-V kernel driver {report.versions['hyperv_driver']}"
    if "kernel" in report.versions:
        version += f"; kernel {report.versions['kernel']}"
    lines += [f"Integration services version: {version}", "", "Drivers"]
    for d in report.drivers:
        state = f"present ({d.how})" if d.present else "absent"
        lines.append(f"  {d.name:<15} {state:<20} {d.role}")
    lines += ["", "Daemons"]
    for dm in report.daemons:
        who = ", ".join(f"{n} (pid {p})" for p, n in dm.processes)
        lines.append(f"  {dm.title:<42} {dm.state:<15} {who}".rstrip())
    lines += ["", "Installed"]
    installed = [(dm.title, path) for dm in report.daemons for path in dm.installed]
    lines += [f"  {path}" for _, path in installed] or ["  (none found on PATH)"]
    if report.warnings:
        lines += ["", "Warnings"] + [f"  {w}" for w in report.warnings]
    lines.append("")
    if report.missing:
        lines.append("Missing")
        lines += [f"  {m.what}: {m.fix}" for m in report.missing]
    else:
        lines.append("Nothing missing.")
    return "\n".join(lines)


def _report(args: dict[str, Any], root: Path) -> int:
    root = Path(args["Root"]) if args["Root"] else root
    if not (root / "proc").is_dir():
        print(f"vmis-guest diagnose: {root / 'proc'} is not a directory", file=sys.stderr)
        return 1
    report = diagnose(root, args["Path"])
    if args["json"]:
        print_json(pascal_keys(report.as_dict()))
    else:
        print(render(report))
    return 0 if report.ok else 1


def _command(root: Path) -> Command:
    return Command("diagnose", "Check this guest's integration services.", (
        Param("Root", help=f"read /proc, /sys and PATH directories under this root "
                           f"(default {root})"),
        Param("Path", help="the PATH to search for daemons (default: $PATH)"),
        Param("json", "switch", help="print JSON"),
    ), lambda args: _report(args, root))


def main(argv: list[str], root: Path = Path("/")) -> int:
    """``vmis-guest diagnose [-Root PATH] [-Path PATH] [-json]`` (``--root`` ... too).

    :param root: the root when ``-Root`` is not given (``vmis-guest --root``).
    :return: 0 when nothing is missing, 1 when something is, 2 on usage errors.
    """
    return run_main(lambda: run_command(_command(root), argv), lambda exc: "vmis-guest",
                    argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
