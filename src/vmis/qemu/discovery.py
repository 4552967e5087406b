"""Find a running VM's QMP socket and agent channel from its QEMU command line or libvirt XML.

For VMs vmis did not start: the administrator points vmis at a QEMU process
(pid or command line) or a libvirt domain, and these pure functions read off

- the QMP monitor socket (``-qmp unix:...``, ``-mon chardev=X,mode=control``),
- the host end of the virtio-serial port ``org.vmis.agent.0``
  (``-device virtserialport,chardev=X,name=org.vmis.agent.0`` and the
  ``-chardev socket,id=X,path=...`` behind it); without one, qemu-ga's port
  ``org.qemu.guest_agent.0``, offered as a guest that runs qemu-ga
  (:attr:`Discovered.guest_agent`, docs/guest-links.md),
- the guest CID of a vhost-vsock device.

Newer libvirt passes listening sockets to QEMU as file descriptors
(``-chardev socket,id=X,fd=N``), so the path is not on the command line;
:func:`discover_from_pid` then follows ``/proc/<pid>/fd/N`` to the socket's
inode and looks its path up in ``/proc/net/unix``. For libvirt, the domain
XML (:func:`discover_from_libvirt_xml`) is the better source anyway.

Nothing here connects to anything; :class:`Discovered.notes` explains what
could not be found and why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmis.errors import ConfigError, NotFoundError
from vmis.qemu.cmdline import AGENT_PORT_NAME, QGA_PORT_NAME

__all__ = [
    "LIBVIRT_QEMU_DIR",
    "Discovered",
    "discover_from_cmdline",
    "discover_from_libvirt_xml",
    "discover_from_pid",
    "libvirt_short_name",
    "parse_qemu_opts",
]

#: libvirt's state directory for QEMU domains (system instance).
LIBVIRT_QEMU_DIR = Path("/var/lib/libvirt/qemu")
#: libvirt shortens domain names to this many characters in per-domain paths
#: (``VIR_DOMAIN_SHORT_NAME_MAX``), to keep socket paths within ``sun_path``.
_LIBVIRT_SHORT_NAME_MAX = 20
_QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


@dataclass(frozen=True, slots=True)
class Discovered:
    """What was found out about one VM."""

    #: the VM's name (``-name guest=`` or libvirt's ``<name>``)
    name: str | None = None
    #: QMP monitor socket
    qmp: Path | None = None
    #: host end of the agent's virtio-serial port (a Unix socket QEMU listens on)
    channel: Path | None = None
    #: the agent behind :attr:`channel`: ``vmis``, or ``qemu-ga`` when the VM
    #: has no vmis port but qemu-ga's
    guest_agent: str = "vmis"
    #: QEMU's chardev id behind the agent port (for QMP ``query-chardev``)
    channel_chardev: str | None = None
    #: guest CID of the vhost-vsock device, if the VM has one
    vsock_cid: int | None = None
    #: the QEMU process, when discovered from one
    pid: int | None = None
    #: why something was not found, or what to beware of (one sentence each)
    notes: tuple[str, ...] = field(default=())


# Section: QEMU option syntax


def parse_qemu_opts(text: str, implied: str = "type") -> dict[str, Any]:
    """Parse one QEMU option value: ``a,b=c,d`` (QemuOpts) or ``{"a": ...}`` (JSON).

    In QemuOpts syntax ``,,`` stands for a literal comma, a leading word
    without ``=`` is the value of the implied key (the backend or driver), and
    a later bare word is a flag (``server`` means ``server=on``; ``nowait``
    means ``wait=off``).

    :param text: the option's value, e.g. ``socket,id=c0,path=/run/a.sock,server=on``.
    :param implied: key for a leading bare word.
    :return: keys to values (strings, or whatever the JSON held).
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            data: dict[str, Any] = json.loads(text)  # starts with "{": an object or an error
        except ValueError as err:
            raise ConfigError(f"bad JSON option {text!r}: {err}") from err
        if "driver" in data and implied != "driver":
            data.setdefault(implied, data["driver"])
        return data
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == ",":
            if text.startswith(",,", index):
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    opts: dict[str, Any] = {}
    for position, part in enumerate(parts):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep:
            opts[key] = value
        elif position == 0:
            opts[implied] = part
        elif part.startswith("no"):
            opts[part[2:]] = "off"
        else:
            opts[part] = "on"
    return opts


def _options(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(option, value) pairs of a QEMU command line, ``--opt`` normalised to ``-opt``."""
    pairs: list[tuple[str, str]] = []
    words = list(argv[1:])
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("--"):
            word = word[1:]
        if word.startswith("-"):
            name, eq, inline = word.partition("=")
            if eq:  # -opt=value form (accepted by QEMU for long options)
                pairs.append((name, inline))
                index += 1
                continue
            if index + 1 < len(words) and not words[index + 1].startswith("-"):
                pairs.append((word, words[index + 1]))
                index += 2
                continue
            pairs.append((word, ""))
        index += 1
    return pairs


def _legacy_unix(spec: str) -> str | None:
    """The socket path of a legacy chardev spec such as ``unix:/run/q.sock,server,nowait``."""
    if not spec.startswith("unix:"):
        return None
    opts = parse_qemu_opts(spec[len("unix:") :], implied="path")
    path = opts.get("path")
    return str(path) if path else None


# Section: command lines


def _number(value: object, what: str) -> int:
    """An integer option of QEMU or libvirt, or one clear error."""
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{what} is {value!r}, not a number") from None


def discover_from_cmdline(
    argv: str | Sequence[str],
    *,
    cwd: Path | None = None,
    fd_paths: dict[int, Path] | None = None,
) -> Discovered:
    """Read QMP socket, agent channel and vsock CID off a QEMU command line.

    :param argv: the command line, as a list (``/proc/<pid>/cmdline`` split at
        NULs) or one shell-quoted string.
    :param cwd: QEMU's working directory, to resolve relative socket paths.
    :param fd_paths: socket paths behind ``fd=N`` chardevs, if known
        (:func:`discover_from_pid` fills this in).
    :return: what was found; :attr:`Discovered.notes` says what was not.
    """
    try:
        words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    except ValueError as err:
        raise ConfigError(f"cannot split the command line: {err}") from None
    notes: list[str] = []
    chardevs: dict[str, dict[str, Any]] = {}
    name: str | None = None
    qmp: Path | None = None
    channel: Path | None = None
    channel_chardev: str | None = None
    qga_chardev: str | None = None
    vsock_cid: int | None = None
    monitors: list[str] = []

    def resolve(raw: str) -> Path:
        path = Path(raw)
        return cwd / path if cwd is not None and not path.is_absolute() else path

    def chardev_path(ident: str) -> Path | None:
        opts = chardevs.get(ident)
        if opts is None:
            notes.append(f"chardev {ident!r} is not defined on the command line")
            return None
        if opts.get("type") != "socket":
            notes.append(f"chardev {ident!r} is a {opts.get('type')!r}, not a Unix socket")
            return None
        if "path" in opts:
            return resolve(str(opts["path"]))
        if "fd" in opts:
            fd = _number(opts["fd"], f"chardev {ident!r} fd")
            if fd_paths and fd in fd_paths:
                return fd_paths[fd]
            notes.append(
                f"chardev {ident!r} is a socket passed as fd {fd} (libvirt does this); "
                "its path is in the domain XML or /proc/<pid>/fd"
            )
            return None
        notes.append(f"chardev {ident!r} is not a Unix socket (TCP?)")
        return None

    pairs = _options(words)
    for option, value in pairs:
        if option == "-chardev":
            opts = parse_qemu_opts(value, implied="type")
            if "id" in opts:
                chardevs[str(opts["id"])] = opts
    for option, value in pairs:
        if option == "-name":
            opts = parse_qemu_opts(value, implied="guest")
            name = str(opts["guest"]) if "guest" in opts else None
        elif option in ("-qmp", "-qmp-pretty") and qmp is None:
            path = _legacy_unix(value)
            if path is not None:
                qmp = resolve(path)
            else:
                notes.append(f"{option} {value} is not a Unix socket")
        elif option == "-mon":
            opts = parse_qemu_opts(value, implied="chardev")
            if opts.get("mode") == "control" and "chardev" in opts:
                monitors.append(str(opts["chardev"]))
        elif option == "-device":
            opts = parse_qemu_opts(value, implied="driver")
            driver = opts.get("driver")
            if driver == "virtserialport" and opts.get("name") == AGENT_PORT_NAME:
                channel_chardev = str(opts.get("chardev")) if opts.get("chardev") else None
            elif driver == "virtserialport" and opts.get("name") == QGA_PORT_NAME:
                qga_chardev = str(opts.get("chardev")) if opts.get("chardev") else None
            elif driver in ("vhost-vsock-pci", "vhost-vsock-device", "vhost-vsock-ccw"):
                cid = opts.get("guest-cid")
                if cid is not None:
                    vsock_cid = _number(cid, f"{driver} guest-cid")
    if qmp is None:
        for ident in monitors:
            qmp = chardev_path(ident)
            if qmp is not None:
                break
        if qmp is None and not monitors:
            notes.append("no QMP monitor (-qmp or -mon mode=control) on the command line")
    guest_agent = "vmis"
    if channel_chardev is not None:
        channel = chardev_path(channel_chardev)
    else:
        notes.append(f"no virtserialport named {AGENT_PORT_NAME} on the command line")
        if qga_chardev is not None:
            channel = chardev_path(qga_chardev)
            if channel is not None:
                channel_chardev, guest_agent = qga_chardev, "qemu-ga"
                notes.append(f"using qemu-ga's port {QGA_PORT_NAME} instead: the VM is "
                             "managed through qemu-ga (-GuestAgent qemu-ga)")
    return Discovered(
        name=name,
        qmp=qmp,
        channel=channel,
        guest_agent=guest_agent,
        channel_chardev=channel_chardev,
        vsock_cid=vsock_cid,
        notes=tuple(notes),
    )


def _unix_socket_paths(proc: Path) -> dict[str, Path]:
    """Bound Unix socket paths by inode, from ``/proc/net/unix``."""
    paths: dict[str, Path] = {}
    try:
        lines = (proc / "net" / "unix").read_text().splitlines()[1:]
    except OSError:
        return paths
    for line in lines:
        fields = line.split(None, 7)
        # Num RefCount Protocol Flags Type St Inode Path
        if len(fields) == 8 and fields[7].startswith("/"):
            paths[fields[6]] = Path(fields[7])
    return paths


def discover_from_pid(pid: int, *, proc: Path = Path("/proc")) -> Discovered:
    """Discover from a running QEMU process (its ``/proc`` entries).

    :param pid: QEMU's process id.
    :param proc: where procfs is mounted (a fake tree in tests).
    :raise NotFoundError: When the process does not exist or is not readable.
    """
    base = proc / str(pid)
    try:
        raw = (base / "cmdline").read_bytes()
    except OSError as err:
        raise NotFoundError(f"no readable process {pid}: {err.strerror}") from err
    argv = [word.decode("utf-8", "replace") for word in raw.split(b"\0") if word]
    if not argv:
        raise NotFoundError(f"process {pid} has no command line (a kernel thread or a zombie)")
    try:
        cwd: Path | None = Path(os.readlink(base / "cwd"))
    except OSError:
        cwd = None
    sockets = _unix_socket_paths(proc)
    fd_paths: dict[int, Path] = {}
    for fd in re.findall(r"(?:^|,)fd=(\d+)", "\n".join(argv), re.M):
        try:
            target = os.readlink(base / "fd" / fd)
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match and match.group(1) in sockets:
            fd_paths[int(fd)] = sockets[match.group(1)]
    found = discover_from_cmdline(argv, cwd=cwd, fd_paths=fd_paths)
    return Discovered(
        name=found.name,
        qmp=found.qmp,
        channel=found.channel,
        guest_agent=found.guest_agent,
        channel_chardev=found.channel_chardev,
        vsock_cid=found.vsock_cid,
        pid=pid,
        notes=found.notes,
    )


# Section: libvirt


def libvirt_short_name(name: str) -> str:
    """The shortened domain name libvirt uses in per-domain directory names."""
    return name[:_LIBVIRT_SHORT_NAME_MAX]


def discover_from_libvirt_xml(xml: str, *, state_dir: Path = LIBVIRT_QEMU_DIR) -> Discovered:
    """Discover from a libvirt domain XML (``virsh dumpxml <domain>``).

    - agent channel: ``<channel type='unix'>`` whose ``<target type='virtio'>``
      is named ``org.vmis.agent.0`` (else ``org.qemu.guest_agent.0``, as a
      qemu-ga guest, with a note); without a ``path`` (an inactive domain
      whose path libvirt generates), the path libvirt generates for a running
      one is derived from the domain id;
    - QMP: a ``-qmp`` added through ``<qemu:commandline>`` if any (vmis can
      use it freely), else libvirt's own monitor socket
      ``<state_dir>/domain-<id>-<short name>/monitor.sock`` of a running domain;
    - vsock: ``<vsock><cid address='N'/></vsock>``.

    :param xml: the domain XML.
    :param state_dir: libvirt's QEMU state directory (``/var/lib/libvirt/qemu``
        for the system instance; ``~/.config/libvirt/qemu/lib`` for a session).
    :raise ConfigError: When the XML cannot be parsed or is not a domain.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise ConfigError(f"not a libvirt domain XML: {err}") from err
    if root.tag != "domain":
        raise ConfigError(f"not a libvirt domain XML: root element <{root.tag}>")
    notes: list[str] = []
    name = root.findtext("name")
    dom_id = root.get("id")
    running_dir: str | None = None
    if name and dom_id and dom_id != "-1":
        running_dir = f"domain-{dom_id}-{libvirt_short_name(name)}"

    channels = {target.get("name"): element for element in root.iterfind("devices/channel")
                if (target := element.find("target")) is not None}
    guest_agent = "vmis"
    port = AGENT_PORT_NAME
    if AGENT_PORT_NAME not in channels and QGA_PORT_NAME in channels:
        guest_agent, port = "qemu-ga", QGA_PORT_NAME
        notes.append(
            f"no <channel> named {AGENT_PORT_NAME}; using qemu-ga's {QGA_PORT_NAME}: the VM is "
            "managed through qemu-ga (-GuestAgent qemu-ga). libvirt connects to that channel "
            "itself while the domain runs and QEMU serves one client at a time, so vmis "
            "reaches qemu-ga there only while libvirt does not (docs/real-vms.md)")
    channel, channel_chardev = _libvirt_channel(channels.get(port), port, running_dir,
                                                state_dir, notes)
    if port not in channels:
        notes.append(f"no <channel> with target name {AGENT_PORT_NAME}")

    qmp: Path | None = None
    extra = [
        arg.get("value", "")
        for arg in root.iterfind(f"{{{_QEMU_NS}}}commandline/{{{_QEMU_NS}}}arg")
    ]
    if extra:
        qmp = discover_from_cmdline(["qemu", *extra]).qmp
    if qmp is None and running_dir is not None:
        qmp = state_dir / running_dir / "monitor.sock"
        notes.append(
            "the QMP socket is libvirt's own monitor, which libvirt keeps connected; "
            "add a second one with <qemu:commandline> (docs/real-vms.md)"
        )
    elif qmp is None:
        notes.append("no QMP socket: the domain is not running and has no extra -qmp")

    vsock_cid: int | None = None
    cid = root.find("devices/vsock/cid")
    if cid is not None and cid.get("address"):
        vsock_cid = _number(cid.get("address"), "<vsock><cid address>")
    return Discovered(
        name=name,
        qmp=qmp,
        channel=channel,
        guest_agent=guest_agent,
        channel_chardev=channel_chardev,
        vsock_cid=vsock_cid,
        notes=tuple(notes),
    )


def _libvirt_channel(element: ET.Element | None, port: str, running_dir: str | None,
                     state_dir: Path, notes: list[str]) -> tuple[Path | None, str | None]:
    """The socket path and chardev id of one ``<channel>``; notes say what is missing."""
    if element is None:
        return None, None
    channel_chardev = None
    alias = element.find("alias")
    if alias is not None and alias.get("name"):
        channel_chardev = f"char{alias.get('name')}"
    if element.get("type") != "unix":
        notes.append(f"the {port} channel is type={element.get('type')!r}, not unix")
        return None, channel_chardev
    source = element.find("source")
    mode = source.get("mode", "bind") if source is not None else "bind"
    if mode != "bind":
        notes.append(
            f"the {port} channel has mode={mode!r}: QEMU dials out, "
            "so vmis would have to listen; use mode='bind'"
        )
    path = source.get("path") if source is not None else None
    if path:
        return Path(path), channel_chardev
    if running_dir is not None:
        return state_dir / "channel" / "target" / running_dir / port, channel_chardev
    notes.append("the channel's socket path is chosen by libvirt when the domain starts")
    return None, channel_chardev
