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
    common: [--pid-file PATH | --no-pid-file] [--log-level LEVEL]

The daemons stay in the foreground (systemd ``Type=simple``), log one line
per event to stderr (the journal), stop on SIGTERM/SIGINT within a fraction
of a second, and exit non-zero with one line on stderr when they cannot start.
Also installed as ``vmis-hv-kvp-daemon``, ``vmis-hv-vss-daemon`` and
``vmis-hv-fcopy-daemon``, and runnable as ``python -m vmis.hyperv``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vmis.errors import VmisError
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
from vmis.services.kvp.pool import DEFAULT_DIRECTORY, KvpPools
from vmis.services.vss.freeze import FakeFreezer, FilesystemFreeze, Freezer, IoctlFreezer

__all__ = ["fcopy_main", "kvp_main", "main", "vss_main"]

PROG = "vmis-guest hyperv"
DEVICES = {
    "kvp": "/dev/vmbus/hv_kvp",
    "vss": "/dev/vmbus/hv_vss",
    "fcopy": "/dev/vmbus/hv_fcopy",
}


def _parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Hyper-V integration-service daemons for Linux guests."
    )
    sub = parser.add_subparsers(dest="service", required=True, metavar="kvp|vss|fcopy")

    def common(p: argparse.ArgumentParser, name: str) -> None:
        p.add_argument("--device", default=DEVICES[name],
                       help="character device, or the emulator's SOCK_SEQPACKET socket "
                            "(default %(default)s)")
        p.add_argument("--pid-file", type=Path, default=Path(f"/run/vmis-hv-{name}.pid"),
                       help="pid file (default %(default)s)")
        p.add_argument("--no-pid-file", action="store_true", help="write no pid file")
        p.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])

    kvp = sub.add_parser("kvp", help="Data Exchange (KVP): hv_kvp_daemon")
    common(kvp, "kvp")
    kvp.add_argument("--pool-dir", type=Path, default=DEFAULT_DIRECTORY,
                     help="KVP pool directory (default %(default)s)")
    kvp.add_argument("--root", type=Path, default=Path("/"),
                     help="read /etc and /sys under this root (default /)")
    kvp.add_argument("--scripts-dir", type=Path, default=None,
                     help="directory of hv_get_dhcp_info, hv_get_dns_info, hv_set_ifconfig "
                          "(default: the Python equivalents shipped with vmis)")
    kvp.add_argument("--config-dir", type=Path, default=DEFAULT_DIRECTORY,
                     help="where SET_IP_INFO writes ifcfg-IF and IF.nmconnection "
                          "(default %(default)s)")
    kvp.add_argument("--no-ip-injection", action="store_true",
                     help="answer GET_IP_INFO / SET_IP_INFO with HV_E_FAIL")

    vss = sub.add_parser("vss", help="Backup (VSS): hv_vss_daemon")
    common(vss, "vss")
    vss.add_argument("--root", type=Path, default=Path("/"),
                     help="read /proc/mounts, /sys and /dev under this root (default /)")
    vss.add_argument("--freezer", choices=["ioctl", "fake"], default="ioctl",
                     help="ioctl: FIFREEZE/FITHAW (default); fake: only log (lab, tests)")
    vss.add_argument("--thaw-timeout", type=float, default=DEFAULT_THAW_TIMEOUT,
                     help="thaw by ourselves this many seconds after a freeze without "
                          "THAW (default %(default)g)")

    fcopy = sub.add_parser("fcopy", help="Guest Service Interface (file copy): hv_fcopy_daemon")
    common(fcopy, "fcopy")
    fcopy.add_argument("--uio", action="store_true",
                       help="serve the raw VMBus channel through uio_hv_generic (kernels "
                            "without /dev/vmbus/hv_fcopy) instead of the character device")
    fcopy.add_argument("--uio-device", default=None,
                       help="the channel's /dev/uioN, or the emulator's socket "
                            "(default: found under --sys-root)")
    fcopy.add_argument("--sys-root", type=Path, default=Path("/sys"),
                       help="where to find the uio channel (default /sys)")
    fcopy.add_argument("--ring-size", type=int, default=None,
                       help="bytes per ring (default: from sysfs, else 16384)")
    fcopy.add_argument("--ring-file", default=None,
                       help="map this file as the rings (the emulator's; default: the device)")
    return parser


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


def _build(args: argparse.Namespace, logger: logging.Logger,
           holder: HoldableHandler) -> Handler:
    if args.service == "kvp":
        pools = KvpPools(args.pool_dir)
        try:
            pools.create()
        except OSError as err:
            raise VmisError(f"cannot create the KVP pools in {args.pool_dir}: "
                            f"{err.strerror}") from err
        net = NetlinkInfo()
        intrinsics = Intrinsics(read_os_info(args.root), net.addresses)
        ipconfig = None
        if not args.no_ip_injection:
            scripts = HelperScripts(args.scripts_dir, {ROOT_ENV: str(args.root)})
            ipconfig = IpConfig(net, scripts, args.root, args.config_dir)
        return KvpHandler(pools, intrinsics, ipconfig, logger)
    if args.service == "vss":
        # Modules imported while filesystems are frozen could try to write
        # their bytecode cache and block: import nothing new, write nothing.
        sys.dont_write_bytecode = True
        freezer: Freezer = IoctlFreezer() if args.freezer == "ioctl" else _LoggingFreezer(logger)
        return VssHandler(FilesystemFreeze(freezer, args.root), holder, logger,
                          thaw_timeout=args.thaw_timeout)
    return FcopyHandler(logger)


def _open_uio(args: argparse.Namespace) -> UioChannel:
    if args.uio_device is None:
        found = find_uio_device(args.sys_root)
        if found is None:
            raise VmisError(
                f"no uio channel for file copy under {args.sys_root}/bus/vmbus/devices/"
                f"{FCOPY_INSTANCE_GUID}/uio (modprobe uio_hv_generic and bind the "
                "Guest Service Interface channel to it)"
            )
        args.uio_device, size = found
        args.ring_size = args.ring_size or size
    return UioChannel(args.uio_device, args.ring_size or DEFAULT_RING_SIZE, args.ring_file)


def main(argv: list[str], prog: str = PROG) -> int:
    """Run ``hyperv kvp|vss|fcopy ...`` (``argv`` starts with the service name).

    :return: the exit status: 0 after a stop request, 1 on failure, 2 on usage errors.
    """
    args = _parser(prog).parse_args(argv)
    logger, holder = _setup_logging(f"vmis.hyperv.{args.service}",
                                    getattr(logging, args.log_level.upper()))
    stop = StopSignal()
    try:
        stop.install()
        handler = _build(args, logger, holder)
        uio = _open_uio(args) if args.service == "fcopy" and args.uio else None
        pid_file = None if args.no_pid_file else PidFile(args.pid_file)
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
                logger.info("serving the uio channel %s", args.uio_device)
                status = UioFcopyDaemon(uio, handler, stop, logger).run()
            else:
                status = DaemonRunner(handler, args.device, stop, logger).run()
        finally:
            holder.resume()
            if pid_file is not None:
                pid_file.release()
        if status == 0:
            logger.info("stopped")
        return status
    except VmisError as err:
        holder.resume()
        print(f"{prog} {args.service}: {err}", file=sys.stderr)
        return 1
    finally:
        stop.close()


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
