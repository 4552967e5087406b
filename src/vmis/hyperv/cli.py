"""``vmis-guest hyperv kvp|vss|fcopy``: run one Hyper-V daemon in the foreground.

Every path is an option, so the same command serves a real guest (the
defaults) and a test (fixture trees and the emulator's socket)::

    vmis-guest hyperv kvp   [--device /dev/vmbus/hv_kvp] [--pool-dir /var/lib/hyperv]
                            [--root /] [--scripts-dir DIR] [--config-dir DIR]
    vmis-guest hyperv vss   [--device /dev/vmbus/hv_vss] [--root /]
                            [--freezer ioctl|fake] [--thaw-timeout 300]
    vmis-guest hyperv fcopy [--device /dev/vmbus/hv_fcopy]
                            [--uio [--uio-device /dev/uioN] [--sys-root /sys]
                                   [--ring-size N] [--ring-file PATH]]
    common: [--pid-file PATH | --no-pid-file] [--log-level LEVEL] [-n] [-h]

These GNU spellings are vmis's parameters (``-Device``, ``-PidFile``, ...,
case-insensitive and shortened as everywhere in vmis: :mod:`vmis.psargs`), so
installed units and scripts keep working; ``-n``/``--no-daemon`` and ``-h``
are the C daemons' options (ours never forks: ``-n`` changes nothing).

The daemons stay in the foreground (systemd ``Type=simple``), log one line
per event to stderr (the journal), stop on SIGTERM/SIGINT within a fraction
of a second, and exit non-zero with one line on stderr when they cannot start.
Also installed as ``vmis-hv-kvp-daemon``, ``vmis-hv-vss-daemon`` and
``vmis-hv-fcopy-daemon``, and runnable as ``python -m vmis.hyperv``.
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

from vmis.errors import LocalFileError, NotFoundError, VmisError
from vmis.hyperv.daemon import DaemonRunner, Handler, HoldableHandler, PidFile, StopSignal
from vmis.hyperv.daemon import setup_logging as _setup_logging
from vmis.hyperv.fcopy import FcopyHandler
from vmis.hyperv.ipconfig import HelperScripts, IpConfig
from vmis.hyperv.kvp import Intrinsics, KvpHandler, read_os_info
from vmis.hyperv.netinfo import NetlinkInfo
from vmis.hyperv.scripts import ROOT_ENV
from vmis.hyperv.uio import (
    DEFAULT_RING_SIZE,
    FCOPY_INSTANCE_GUID,
    UioChannel,
    UioFcopyDaemon,
    find_uio_device,
)
from vmis.hyperv.vss import DEFAULT_THAW_TIMEOUT, VssHandler
from vmis.psargs import HELP_WORDS, Command, Param, find_verb, run_command, run_main
from vmis.services.kvp.pool import DEFAULT_DIRECTORY, KvpPools
from vmis.services.vss.freeze import FakeFreezer, FilesystemFreeze, Freezer, IoctlFreezer

__all__ = ["fcopy_main", "kvp_main", "main", "vss_main"]

PROG = "vmis-guest hyperv"
DEVICES = {
    "kvp": "/dev/vmbus/hv_kvp",
    "vss": "/dev/vmbus/hv_vss",
    "fcopy": "/dev/vmbus/hv_fcopy",
}


def _common(name: str) -> tuple[Param, ...]:
    return (
        Param("Device", default=DEVICES[name],
              help=f"character device, or the emulator's SOCK_SEQPACKET socket "
                   f"(default {DEVICES[name]})"),
        Param("PidFile", default=f"/run/vmis-hv-{name}.pid",
              help=f"pid file (default /run/vmis-hv-{name}.pid)"),
        Param("NoPidFile", "switch", help="write no pid file"),
        Param("LogLevel", choices=("debug", "info", "warning", "error"), default="info"),
        # The C daemons fork unless given -n; ours never does (systemd Type=simple).
        Param("NoDaemon", "switch", aliases=("n",),
              help="stay in the foreground (always so; the C daemons' -n, --no-daemon)"),
    )


class _LoggingFreezer:
    """The fake freezer, telling the log what it would do (the log is held
    while frozen, so the lines come out after the thaw)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._fake = FakeFreezer()
        self._log = logger

    def freeze(self, mountpoint: str) -> None:
        self._fake.freeze(mountpoint)
        self._log.info("fake freezer: froze %s", mountpoint)

    def thaw(self, mountpoint: str) -> None:
        self._fake.thaw(mountpoint)
        self._log.info("fake freezer: thawed %s", mountpoint)


def _build(service: str, args: dict[str, Any], logger: logging.Logger,
           holder: HoldableHandler) -> Handler:
    if service == "kvp":
        pool_dir = Path(args["PoolDir"])
        pools = KvpPools(pool_dir)
        try:
            pools.create()
        except OSError as err:
            raise LocalFileError(f"cannot create the KVP pools in {pool_dir}: "
                                 f"{err.strerror}") from err
        net = NetlinkInfo()
        root = Path(args["Root"])
        intrinsics = Intrinsics(read_os_info(root), net.addresses)
        ipconfig = None
        if not args["NoIpInjection"]:
            scripts_dir = Path(args["ScriptsDir"]) if args["ScriptsDir"] else None
            scripts = HelperScripts(scripts_dir, {ROOT_ENV: str(root)})
            ipconfig = IpConfig(net, scripts, root, Path(args["ConfigDir"]))
        return KvpHandler(pools, intrinsics, ipconfig, logger)
    if service == "vss":
        # Modules imported while filesystems are frozen could try to write
        # their bytecode cache and block: import nothing new, write nothing.
        sys.dont_write_bytecode = True
        freezer: Freezer = (IoctlFreezer() if args["Freezer"] == "ioctl"
                            else _LoggingFreezer(logger))
        return VssHandler(FilesystemFreeze(freezer, Path(args["Root"])), holder, logger,
                          thaw_timeout=args["ThawTimeout"])
    return FcopyHandler(logger)


def _open_uio(args: dict[str, Any]) -> tuple[UioChannel, str]:
    device, ring_size = args["UioDevice"], args["RingSize"]
    if device is None:
        sys_root = Path(args["SysRoot"])
        found = find_uio_device(sys_root)
        if found is None:
            raise NotFoundError(
                f"no uio channel for file copy under {sys_root}/bus/vmbus/devices/"
                f"{FCOPY_INSTANCE_GUID}/uio (modprobe uio_hv_generic and bind the "
                "Guest Service Interface channel to it)"
            )
        device, size = found
        ring_size = ring_size or size
    return UioChannel(device, ring_size or DEFAULT_RING_SIZE, args["RingFile"]), device


def _serve(service: str, prog: str, args: dict[str, Any]) -> int:
    logger, holder = _setup_logging(f"vmis.hyperv.{service}",
                                    getattr(logging, args["LogLevel"].upper()))
    stop = StopSignal()
    try:
        stop.install()
        handler = _build(service, args, logger, holder)
        uio, uio_device = _open_uio(args) if service == "fcopy" and args["Uio"] else (None, "")
        pid_file = None if args["NoPidFile"] else PidFile(Path(args["PidFile"]))
        if pid_file is not None:
            try:
                pid_file.acquire()
            except VmisError:
                if uio is not None:
                    uio.close()
                raise
        try:
            if uio is not None:
                assert isinstance(handler, FcopyHandler)
                logger.info("serving the uio channel %s", uio_device)
                status = UioFcopyDaemon(uio, handler, stop, logger).run()
            else:
                status = DaemonRunner(handler, args["Device"], stop, logger).run()
        finally:
            holder.resume()
            if pid_file is not None:
                pid_file.release()
        if status == 0:
            logger.info("stopped")
        return status
    except VmisError as err:
        holder.resume()
        print(f"{prog} {service}: {err}", file=sys.stderr)
        return 1
    finally:
        stop.close()


#: one command per daemon; ``--pid-file`` and the other GNU spellings of the
#: parameter names work as they did under argparse (vmis.psargs)
COMMANDS: tuple[Command, ...] = (
    Command("kvp", "Data Exchange (KVP): hv_kvp_daemon", (
        *_common("kvp"),
        Param("PoolDir", default=str(DEFAULT_DIRECTORY),
              help=f"KVP pool directory (default {DEFAULT_DIRECTORY})"),
        Param("Root", default="/", help="read /etc and /sys under this root (default /)"),
        Param("ScriptsDir",
              help="directory of hv_get_dhcp_info, hv_get_dns_info, hv_set_ifconfig "
                   "(default: the Python equivalents shipped with vmis)"),
        Param("ConfigDir", default=str(DEFAULT_DIRECTORY),
              help=f"where SET_IP_INFO writes ifcfg-IF and IF.nmconnection "
                   f"(default {DEFAULT_DIRECTORY})"),
        Param("NoIpInjection", "switch",
              help="answer GET_IP_INFO / SET_IP_INFO with HV_E_FAIL"),
    ), partial(_serve, "kvp")),
    Command("vss", "Backup (VSS): hv_vss_daemon", (
        *_common("vss"),
        Param("Root", default="/",
              help="read /proc/mounts, /sys and /dev under this root (default /)"),
        Param("Freezer", choices=("ioctl", "fake"), default="ioctl",
              help="ioctl: FIFREEZE/FITHAW (default); fake: only log (lab, tests)"),
        Param("ThawTimeout", "float", default=DEFAULT_THAW_TIMEOUT,
              help=f"thaw by ourselves this many seconds after a freeze without THAW "
                   f"(default {DEFAULT_THAW_TIMEOUT:g})"),
    ), partial(_serve, "vss")),
    Command("fcopy", "Guest Service Interface (file copy): hv_fcopy_daemon", (
        *_common("fcopy"),
        Param("Uio", "switch",
              help="serve the raw VMBus channel through uio_hv_generic (kernels without "
                   "/dev/vmbus/hv_fcopy) instead of the character device"),
        Param("UioDevice", help="the channel's /dev/uioN, or the emulator's socket "
                                "(default: found under -SysRoot)"),
        Param("SysRoot", default="/sys", help="where to find the uio channel (default /sys)"),
        Param("RingSize", "int", help="bytes per ring (default: from sysfs, else 16384)"),
        Param("RingFile",
              help="map this file as the rings (the emulator's; default: the device)"),
    ), partial(_serve, "fcopy")),
)


def _help(prog: str) -> str:
    lines = [f"usage: {prog} kvp|vss|fcopy [parameters]", "",
             "Hyper-V integration-service daemons for Linux guests.", ""]
    lines += [f"  {c.name:6} {c.summary}" for c in COMMANDS]
    lines += ["", f"Run '{prog} SERVICE -?' for a daemon's parameters."]
    return "\n".join(lines)


def main(argv: list[str], prog: str = PROG) -> int:
    """Run ``hyperv kvp|vss|fcopy ...`` (``argv`` starts with the service name).

    :return: the exit status: 0 after a stop request, 1 on failure, 2 on usage errors.
    """
    def run() -> int:
        if not argv or argv[0] in HELP_WORDS:
            print(_help(prog))
            return 0 if argv else 2
        cmd, rest = find_verb(COMMANDS, argv)
        return run_command(cmd, rest, lambda args: cmd.run(prog, args))

    return run_main(run, lambda exc: prog)


def kvp_main() -> int:
    """Console script ``vmis-hv-kvp-daemon``."""
    return main(["kvp", *sys.argv[1:]], prog="vmis-hv-kvp-daemon")


def vss_main() -> int:
    """Console script ``vmis-hv-vss-daemon``."""
    return main(["vss", *sys.argv[1:]], prog="vmis-hv-vss-daemon")


def fcopy_main() -> int:
    """Console script ``vmis-hv-fcopy-daemon``."""
    return main(["fcopy", *sys.argv[1:]], prog="vmis-hv-fcopy-daemon")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
