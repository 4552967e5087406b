"""The QEMU process of a vmis machine and its work directory: start, record, attach, stop.

:class:`QemuProcess` starts QEMU with the command line of
:mod:`vmis.qemu.cmdline`, records what it started in ``machine.json`` inside
the work directory, and stops it again. Another process (the host manager,
the CLI) gets an equivalent object with :meth:`QemuProcess.attach`, which
checks by pid *and* process start time that the recorded QEMU is still the
one running, so a recycled pid is never mistaken for the machine.

Process control (:meth:`~QemuProcess.start`, :meth:`~QemuProcess.kill`) is
synchronous and quick. What is done with the guest once it runs (waiting
for its console, boot and agent channel; QMP operations) is
:class:`~vmis.qemu.machine.QemuMachine`'s, which is the class to use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from vmis.errors import MachineStartError, NotFoundError, QemuNotInstalled, StateError
from vmis.qemu.cmdline import BootSpec, DiskMode, MachineConfig, MachinePaths, build_command
from vmis.qemu.monitor import qmp_ready
from vmis.qemu.proc import stat_fields

__all__ = ["Bootable", "QemuProcess", "create_overlay", "default_vsock_cid", "host_has_vhost_vsock"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_VHOST_VSOCK = Path("/dev/vhost-vsock")


class Bootable(Protocol):
    """Anything that says how to boot it; :class:`vmis.qemu.image.guest_image.GuestImage` does."""

    def boot_spec(self) -> BootSpec: ...


def host_has_vhost_vsock() -> bool:
    """Whether this host can give guests a vsock device (``/dev/vhost-vsock`` exists)."""
    return _VHOST_VSOCK.exists()


def default_vsock_cid(workdir: Path) -> int:
    """A guest CID derived from the work directory: stable across restarts, rarely shared.

    CIDs must be unique per host; QEMU refuses to start on a clash, and an
    explicit ``vsock_cid`` resolves it.
    """
    return 3 + zlib.crc32(str(workdir.absolute()).encode()) % (1 << 30)


def _proc_identity(pid: int) -> str | None:
    """The start time (clock ticks since boot) of a live process, ``None`` if gone or a zombie."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == "X":
        return None
    if fields[0] == "Z":
        # The main thread of a multi-threaded process turns into a zombie
        # first; the process has exited only when its other threads are gone too.
        try:
            if len(os.listdir(f"/proc/{pid}/task")) <= 1:
                return None
        except OSError:
            return None
    return fields[19]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def create_overlay(boot: BootSpec, overlay: Path) -> None:
    """Create *overlay*, a qcow2 file backed by *boot*'s disk image (which it never writes).

    :raise QemuNotInstalled: When ``qemu-img`` is missing.
    :raise MachineStartError: When ``qemu-img`` cannot create it.
    """
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise QemuNotInstalled("qemu-img is not installed; install the Debian package qemu-utils")
    proc = subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-F", boot.disk_format,
         "-b", str(boot.disk.absolute()), str(overlay)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise MachineStartError(f"cannot create disk overlay {overlay}: {proc.stderr.strip()}")


def _config_to_json(config: MachineConfig) -> dict[str, Any]:
    data = asdict(config)
    data["boot"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in data["boot"].items()}
    data["disk_mode"] = config.disk_mode.value
    return data


def _config_from_json(data: dict[str, Any]) -> MachineConfig:
    boot = dict(data["boot"])
    for key in ("kernel", "initrd", "firmware", "disk"):
        if boot.get(key) is not None:
            boot[key] = Path(boot[key])
    fields = dict(data)
    fields["boot"] = BootSpec(**boot)
    fields["disk_mode"] = DiskMode(data["disk_mode"])
    fields["extra_append"] = tuple(data.get("extra_append", ()))
    fields["extra_args"] = tuple(data.get("extra_args", ()))
    return MachineConfig(**fields)


class QemuProcess:
    """The QEMU process of a machine run by vmis, with everything it owns in one work directory.

    :param name: machine name (QEMU's ``-name``).
    :param workdir: directory for sockets, logs, the state record and overlays;
        short enough for Unix socket paths (about 90 bytes).
    :param image: what to boot: a :class:`~vmis.qemu.image.guest_image.GuestImage` or a
        :class:`BootSpec`.
    :param memory_mib: guest RAM.
    :param cpus: virtual CPUs.
    :param accel: ``"tcg"`` (default; see docs/real-vms.md, "The test machines") or ``"kvm"``.
    :param disk_mode: :attr:`DiskMode.SNAPSHOT` discards the guest's disk writes at
        exit; :attr:`DiskMode.OVERLAY` keeps them in a qcow2 overlay and allows
        block snapshots.
    :param clock_offset: seconds the guest's clock starts ahead of the host's.
    :param network: attach a NIC on user-mode networking (``restrict=on``).
    :param cdrom: attach an empty CD-ROM drive.
    :param vsock_cid: ``"auto"`` adds a vhost-vsock device with
        :func:`default_vsock_cid` when the host has ``/dev/vhost-vsock``;
        an int forces one with that CID; ``None`` never adds one.
    :param no_reboot: make a guest reboot end QEMU instead.
    :param extra_append: words added to the kernel command line.
    :param extra_args: arguments added to QEMU's command line.
    :param qemu: the QEMU program; default ``$VMIS_QEMU`` or ``qemu-system-x86_64``.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        image: Bootable | BootSpec,
        *,
        memory_mib: int = 512,
        cpus: int = 1,
        accel: str = "tcg",
        disk_mode: DiskMode = DiskMode.SNAPSHOT,
        clock_offset: float = 0.0,
        network: bool = True,
        cdrom: bool = True,
        vsock_cid: int | Literal["auto"] | None = "auto",
        no_reboot: bool = False,
        extra_append: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        qemu: str | None = None,
    ) -> None:
        workdir = workdir.absolute()
        boot = image if isinstance(image, BootSpec) else image.boot_spec()
        if vsock_cid == "auto":
            vsock_cid = default_vsock_cid(workdir) if host_has_vhost_vsock() else None
        config = MachineConfig(
            name=name, boot=boot, memory_mib=memory_mib, cpus=cpus, accel=accel,
            disk_mode=disk_mode, clock_offset=clock_offset, network=network, cdrom=cdrom,
            vsock_cid=vsock_cid, no_reboot=no_reboot, extra_append=extra_append,
            extra_args=extra_args,
        )  # fmt: skip
        self._init(config, workdir, qemu)

    def _init(self, config: MachineConfig, workdir: Path, qemu: str | None) -> None:
        #: the configuration the command line is built from
        self.config = config
        #: the machine's files
        self.paths = MachinePaths(workdir)
        #: the QEMU program
        self.qemu = qemu or os.environ.get("VMIS_QEMU", "qemu-system-x86_64")
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._identity: str | None = None
        self._started_at: float | None = None  # wall clock
        self._started_mono: float | None = None  # monotonic, this process only
        #: qcow2 files of the root disk, oldest first; the last one is written to
        self.disk_chain: list[Path] = []

    @classmethod
    def from_config(
        cls, config: MachineConfig, workdir: Path, *, qemu: str | None = None
    ) -> Self:
        """A machine from a ready :class:`MachineConfig`."""
        machine = cls.__new__(cls)
        machine._init(config, workdir.absolute(), qemu)
        return machine

    @classmethod
    def attach(cls, workdir: Path) -> Self:
        """The machine recorded in a work directory, started by this or another process.

        The result may describe a machine that is no longer running
        (:meth:`is_running` is false, :meth:`status` says ``"off"``); it can be
        started again with the same configuration.

        :raise NotFoundError: When the directory holds no machine record.
        """
        paths = MachinePaths(workdir.absolute())
        try:
            state = json.loads(paths.state.read_text())
        except FileNotFoundError as err:
            raise NotFoundError(f"no vmis machine in {paths.workdir}") from err
        except (OSError, ValueError) as err:
            raise NotFoundError(f"unreadable machine record {paths.state}: {err}") from err
        if state.get("version") != _STATE_VERSION:
            raise NotFoundError(f"machine record {paths.state} has an unknown version")
        machine = cls.from_config(
            _config_from_json(state["config"]), paths.workdir, qemu=state["qemu"]
        )
        machine._pid = state.get("pid")
        machine._identity = state.get("identity")
        machine._started_at = state.get("started_at")
        machine.disk_chain = [Path(p) for p in state.get("disk_chain", [])]
        return machine

    # Section: process

    @property
    def pid(self) -> int | None:
        """QEMU's process id while it runs, else ``None``."""
        return self._pid if self.is_running() else None

    @property
    def started_at(self) -> float | None:
        """When QEMU was last started (seconds since the epoch)."""
        return self._started_at

    def is_running(self) -> bool:
        """Whether the QEMU process of this machine is alive."""
        if self._popen is not None:
            return self._popen.poll() is None
        if self._pid is None:
            return False
        return _proc_identity(self._pid) == self._identity

    def command(self) -> list[str]:
        """The QEMU command line :meth:`start` runs (for logs, docs and tests)."""
        overlay = self.disk_chain[-1] if self.disk_chain else None
        return build_command(
            self.config, self.paths, qemu=self.qemu, now=time.time(), overlay=overlay
        )

    def start(self, timeout: float = 30.0, *, die_with_parent: bool = False) -> None:
        """Start QEMU and wait until its monitor answers (typically well under a second).

        The guest then boots on its own; see :meth:`wait_for_boot`.

        :param timeout: seconds allowed for QEMU to set the machine up.
        :param die_with_parent: have the kernel kill QEMU when the calling
            *thread* ends (``PR_SET_PDEATHSIG``), so a test run that is killed
            leaves no machine behind. Not for machines meant to outlive their
            starter, and only from a long-lived thread.
        :raise StateError: When the machine is already running.
        :raise QemuNotInstalled: When QEMU (or ``qemu-img`` for an overlay) is missing.
        :raise MachineStartError: When QEMU exits or does not answer in time; the
            message quotes QEMU's last words.
        """
        if self.is_running():
            raise StateError(f"machine {self.config.name} is already running (pid {self._pid})")
        program = shutil.which(self.qemu)
        if program is None:
            raise QemuNotInstalled(
                f"{self.qemu} is not installed; install the Debian package qemu-system-x86"
            )
        self.paths.check()
        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        for stale in (self.paths.qmp, self.paths.channel, self.paths.qga):
            stale.unlink(missing_ok=True)
        if self.config.disk_mode is DiskMode.OVERLAY:
            self._prepare_overlay()
        argv = build_command(
            self.config,
            self.paths,
            qemu=program,
            now=time.time(),
            overlay=self.disk_chain[-1] if self.disk_chain else None,
        )
        log.info("starting %s: %s", self.config.name, " ".join(argv))
        launch = argv
        if die_with_parent:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise QemuNotInstalled("setpriv is not installed; it is part of util-linux")
            # setpriv sets PR_SET_PDEATHSIG and execs QEMU in the same process.
            launch = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        with self.paths.qemu_log.open("wb") as qemu_log:
            self._started_mono = time.monotonic()
            self._started_at = time.time()
            # A session of its own: a Ctrl-C meant for the caller does not kill
            # the machine, and the machine may outlive the process that started it.
            self._popen = subprocess.Popen(
                launch, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        self._pid = self._popen.pid
        self._identity = None
        deadline = time.monotonic() + timeout
        while True:
            if self._popen.poll() is not None:
                code = self._popen.returncode
                raise MachineStartError(
                    f"QEMU exited with status {code} while starting {self.config.name}: "
                    f"{_tail(self.paths.qemu_log) or 'no output'}"
                )
            if self.paths.qmp.exists() and qmp_ready(self.paths.qmp, timeout=5.0):
                break
            if time.monotonic() > deadline:
                self.kill()
                raise MachineStartError(
                    f"QEMU did not answer on {self.paths.qmp} within {timeout:.0f} s; "
                    f"see {self.paths.qemu_log}"
                )
            time.sleep(0.05)
        self._identity = _proc_identity(self._pid)
        self._save_state(argv)

    def save(self) -> None:
        """Record the machine in its work directory without starting it.

        Another process then gets it with :meth:`attach` and may :meth:`start`
        it (``vmis vm create`` records, ``vmis Start-VM`` starts).

        :raise ConfigError: When the work directory's path is too long for its sockets.
        """
        self.paths.check()
        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        self._save_state(self.command())

    def _prepare_overlay(self) -> None:
        """Find the machine's existing qcow2 chain, or create its first overlay.

        A persistent disk is never replaced: a new :class:`QemuMachine` for a
        work directory that already holds a disk picks up where the last one
        left off (including overlays added by block snapshots).
        """
        if not self.disk_chain and self.paths.state.exists():
            try:
                recorded = json.loads(self.paths.state.read_text()).get("disk_chain", [])
            except (OSError, ValueError):
                recorded = []
            self.disk_chain = [Path(p) for p in recorded]
        if not self.disk_chain and self.paths.overlay.exists():
            self.disk_chain = [self.paths.overlay]
        if self.disk_chain:
            if not self.disk_chain[-1].exists():
                raise MachineStartError(
                    f"the disk of {self.config.name} is gone: {self.disk_chain[-1]} is missing"
                )
            return
        create_overlay(self.config.boot, self.paths.overlay)
        self.disk_chain = [self.paths.overlay]

    def _save_state(self, argv: list[str] | None = None) -> None:
        state = {
            "version": _STATE_VERSION,
            "qemu": self.qemu,
            "pid": self._pid,
            "identity": self._identity,
            "started_at": self._started_at,
            "argv": argv,
            "config": _config_to_json(self.config),
            "disk_chain": [str(p) for p in self.disk_chain],
        }
        if argv is None and self.paths.state.exists():
            state["argv"] = json.loads(self.paths.state.read_text()).get("argv")
        tmp = self.paths.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.paths.state)

    def kill(self) -> None:
        """Kill QEMU at once (SIGKILL) and wait until it is gone; nothing if it is not running."""
        self._signal(signal.SIGKILL, wait=10.0)

    def terminate(self, timeout: float = 10.0) -> None:
        """Ask QEMU to exit (SIGTERM; the guest gets no say); kill it after ``timeout`` s."""
        if not self._signal(signal.SIGTERM, wait=timeout):
            self.kill()

    def _signal(self, sig: signal.Signals, wait: float) -> bool:
        """Send a signal to a running QEMU and wait up to ``wait`` s for it to exit."""
        if not self.is_running() or self._pid is None:
            return True
        try:
            os.kill(self._pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while self.is_running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    async def wait_exit(self, timeout: float) -> bool:
        """Wait for QEMU to exit.

        :return: ``True`` if it exited within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def cleanup(self, *, remove_disk: bool = False) -> None:
        """Kill QEMU if it runs and remove its sockets, pid file and state record.

        Logs stay for post-mortems; overlays stay unless ``remove_disk``.
        """
        self.kill()
        for path in (self.paths.qmp, self.paths.channel, self.paths.qga, self.paths.pidfile,
                     self.paths.state):
            path.unlink(missing_ok=True)
        if remove_disk:
            for disk in self.disk_chain:
                disk.unlink(missing_ok=True)
            self.disk_chain = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
