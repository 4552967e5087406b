"""Python equivalents of the KVP daemon's helper scripts.

The C ``hv_kvp_daemon`` asks three scripts (in ``/usr/libexec/hypervkvpd``)
what it cannot learn itself, and our KVP daemon keeps that interface, so the
distribution's scripts and these are interchangeable:

``hv_get_dhcp_info IFNAME``  prints ``Enabled`` or ``Disabled``
``hv_get_dns_info IFNAME``   prints one DNS server per line
``hv_set_ifconfig IFCFG NMCONNECTION``  installs the configuration the host
    injected (SET_IP_INFO) and applies it; non-zero exit = failure

Every file is read and written under a root directory (``-Root``, spelled
``--root`` too, or the ``VMIS_HV_ROOT`` environment variable, default ``/``)
so tests run them against fixture trees; and the network is only *applied*
(``nmcli`` / ``networkctl``) when the root is ``/`` and ``-NoApply``
(``--no-apply``) is not given.

Run as ``vmis-hv-get-dhcp-info``, ``vmis-hv-get-dns-info``,
``vmis-hv-set-ifconfig`` or ``python -m vmis.hyperv.scripts NAME ...``.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from vmis.errors import ConfigError, ExternalProgramError, VmisError
from vmis.psargs import HELP_WORDS, Command, Param, find_verb, run_command, run_main

__all__ = [
    "dhcp_main",
    "dns_main",
    "get_dhcp_info",
    "get_dns_info",
    "main",
    "set_ifconfig",
    "set_ifconfig_main",
]

ROOT_ENV = "VMIS_HV_ROOT"


def _root(option: str | None) -> Path:
    return Path(option or os.environ.get(ROOT_ENV) or "/")


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# Section: hv_get_dhcp_info

_TRUE = {"yes", "true", "ipv4", "ipv6", "both", "1"}


def _nm_dhcp(root: Path, ifname: str) -> bool | None:
    for path in sorted(_under(root, "/etc/NetworkManager/system-connections").glob("*")):
        cfg = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            cfg.read_string(_read(path))
        except configparser.Error:
            continue
        if cfg.get("connection", "interface-name", fallback=None) != ifname:
            continue
        return cfg.get("ipv4", "method", fallback="auto") == "auto"
    return None


def _networkd_dhcp(root: Path, ifname: str) -> bool | None:
    for path in sorted(_under(root, "/etc/systemd/network").glob("*.network")):
        text = _read(path)
        names = re.findall(r"^\s*Name\s*=\s*(.+)$", text, re.M)
        if not any(ifname in n.split() for n in names):
            continue
        dhcp = re.findall(r"^\s*DHCP\s*=\s*(\S+)", text, re.M)
        return bool(dhcp) and dhcp[-1].lower() in _TRUE
    return None


def _ifcfg_dhcp(root: Path, ifname: str) -> bool | None:
    path = _under(root, f"/etc/sysconfig/network-scripts/ifcfg-{ifname}")
    if not path.exists():
        path = _under(root, f"/etc/sysconfig/network/ifcfg-{ifname}")  # SUSE
    if not path.exists():
        return None
    return "dhcp" in _read(path).lower()


def _ifupdown_dhcp(root: Path, ifname: str) -> bool | None:
    text = _read(_under(root, "/etc/network/interfaces"))
    found = re.findall(rf"^\s*iface\s+{re.escape(ifname)}\s+inet\s+(\S+)", text, re.M)
    return found[0] == "dhcp" if found else None


def _netplan_dhcp(root: Path, ifname: str) -> bool | None:
    # No YAML parser in the standard library: look for "ifname:" followed, in
    # its indented block, by "dhcp4: true" -- the shape every netplan
    # generator (cloud-init, installers) writes.
    for path in sorted(_under(root, "/etc/netplan").glob("*.yaml")):
        lines = _read(path).splitlines()
        for i, line in enumerate(lines):
            m = re.match(rf"^(\s*){re.escape(ifname)}:\s*$", line)
            if not m:
                continue
            indent = len(m.group(1))
            for inner in lines[i + 1 :]:
                if inner.strip() and len(inner) - len(inner.lstrip()) <= indent:
                    break
                d = re.match(r"^\s*dhcp4:\s*(\S+)", inner)
                if d:
                    return d.group(1).lower() in _TRUE
            return False
    return None


def get_dhcp_info(ifname: str, root: Path = Path("/")) -> str:
    """Whether ``ifname`` is configured for DHCP, as ``Enabled`` / ``Disabled``.

    Looks, in order, at NetworkManager keyfiles, systemd-networkd, ifcfg
    (RHEL/SUSE), ifupdown and netplan; the first that mentions the interface
    decides.
    """
    for probe in (_nm_dhcp, _networkd_dhcp, _ifcfg_dhcp, _ifupdown_dhcp, _netplan_dhcp):
        verdict = probe(root, ifname)
        if verdict is not None:
            return "Enabled" if verdict else "Disabled"
    return "Disabled"


# Section: hv_get_dns_info

_STUB_RESOLVERS = {"127.0.0.53", "127.0.0.54"}


def _nameservers(text: str) -> list[str]:
    return re.findall(r"^\s*nameserver\s+(\S+)", text, re.M)


def get_dns_info(root: Path = Path("/")) -> list[str]:
    """The DNS servers from ``/etc/resolv.conf``; behind systemd-resolved's stub,
    the upstream servers from ``/run/systemd/resolve/resolv.conf``."""
    servers = _nameservers(_read(_under(root, "/etc/resolv.conf")))
    if servers and set(servers) <= _STUB_RESOLVERS:
        upstream = _nameservers(_read(_under(root, "/run/systemd/resolve/resolv.conf")))
        if upstream:
            return upstream
    return servers


# Section: hv_set_ifconfig


def _networkd_unit(nm: configparser.ConfigParser) -> str:
    ifname = nm.get("connection", "interface-name")
    lines = ["[Match]", f"Name={ifname}", "", "[Network]"]
    v4 = nm.get("ipv4", "method", fallback="auto")
    v6 = nm.get("ipv6", "method", fallback="auto")
    dhcp = {("auto", "auto"): "yes", ("auto", "manual"): "ipv4", ("manual", "auto"): "ipv6"}
    lines.append(f"DHCP={dhcp.get((v4, v6), 'no')}")
    for family in ("ipv4", "ipv6"):
        if not nm.has_section(family):
            continue
        for key, value in nm.items(family):
            if re.fullmatch(r"address\d+", key):
                lines.append(f"Address={value.split(',')[0]}")
            elif key == "gateway":
                lines.append(f"Gateway={value}")
            elif key == "dns":
                lines += [f"DNS={d}" for d in value.split(";") if d]
    return "\n".join(lines) + "\n"


def _with_autoconnect(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.strip().startswith("autoconnect="):
            continue
        out.append(line)
        if line.strip() == "[connection]":
            out.append("autoconnect=true")
    return "\n".join(out) + "\n"


def _run(argv: list[str]) -> None:
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"{argv[0]} not found; the configuration is installed but not applied")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ExternalProgramError(f"{' '.join(argv)} failed: "
                                   f"{done.stderr.strip() or done.returncode}")


def set_ifconfig(ifcfg: Path, nmconnection: Path, root: Path = Path("/"),
                 apply: bool = True) -> list[Path]:
    """Install the configuration written by the KVP daemon for SET_IP_INFO.

    * NetworkManager present (``/etc/NetworkManager``): the keyfile goes to
      ``system-connections/`` (mode 0600, ``autoconnect=true``);
    * else systemd-networkd (``/etc/systemd/network``): a translated
      ``70-hyperv-IFNAME.network``;
    * the ifcfg file also goes to ``/etc/sysconfig/network-scripts/`` where
      that directory exists (RHEL's legacy scripts).

    :param apply: ask NetworkManager / networkd to apply it (only ever when
        ``root`` is ``/``).
    :raise ConfigError: When the input is unreadable or no network manager is found.
    :raise ExternalProgramError: When applying fails.
    :return: the files written.
    """
    nm = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        nm_text = nmconnection.read_text(encoding="utf-8")
        nm.read_string(nm_text)
        ifcfg_text = ifcfg.read_text(encoding="utf-8")
        ifname = nm.get("connection", "interface-name")
    except (OSError, configparser.Error) as err:
        raise ConfigError(f"cannot read the interface configuration: {err}") from err
    written: list[Path] = []
    scripts_dir = _under(root, "/etc/sysconfig/network-scripts")
    if scripts_dir.is_dir():
        target = scripts_dir / f"ifcfg-{ifname}"
        target.write_text(ifcfg_text, encoding="utf-8")
        written.append(target)
    nm_dir = _under(root, "/etc/NetworkManager")
    networkd_dir = _under(root, "/etc/systemd/network")
    applying = apply and root == Path("/")
    if nm_dir.is_dir():
        connections = nm_dir / "system-connections"
        connections.mkdir(mode=0o755, exist_ok=True)
        target = connections / nmconnection.name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_with_autoconnect(nm_text))
        os.chmod(target, 0o600)
        written.append(target)
        if applying:
            _run(["nmcli", "connection", "load", str(target)])
            _run(["nmcli", "connection", "up", "filename", str(target)])
    elif networkd_dir.is_dir():
        target = networkd_dir / f"70-hyperv-{ifname}.network"
        target.write_text(_networkd_unit(nm), encoding="utf-8")
        written.append(target)
        if applying:
            _run(["networkctl", "reload"])
    elif not written:
        raise ConfigError(
            "no supported network configuration found "
            "(NetworkManager, systemd-networkd or /etc/sysconfig/network-scripts)"
        )
    return written


# Section: command lines


def _print_dhcp_info(args: dict[str, Any]) -> int:
    print(get_dhcp_info(args["Interface"], _root(args["Root"])))
    return 0


def _print_dns_info(args: dict[str, Any]) -> int:
    for server in get_dns_info(_root(args["Root"])):
        print(server)
    return 0


def _set_ifconfig(args: dict[str, Any]) -> int:
    try:
        for path in set_ifconfig(Path(args["Ifcfg"]), Path(args["NmConnection"]),
                                 _root(args["Root"]), apply=not args["NoApply"]):
            print(path)
    except VmisError as err:
        print(f"vmis-hv-set-ifconfig: {err}", file=sys.stderr)
        return 1
    return 0


ROOT = Param("Root", help=f"read and write under this root (default ${ROOT_ENV}, else /)")

#: the C scripts' names and command lines; ``--root`` and ``--no-apply`` are
#: -Root and -NoApply (vmis.psargs takes GNU spellings)
COMMANDS: tuple[Command, ...] = (
    Command("hv_get_dhcp_info", "Print Enabled or Disabled: does the interface use DHCP?", (
        Param("Interface", required=True, position=0), ROOT,
    ), _print_dhcp_info, aliases=("get-dhcp-info",)),
    # The interface is accepted and, as in the C daemon's script, not used:
    # resolv.conf is global.
    Command("hv_get_dns_info", "Print the DNS servers, one a line.", (
        Param("Interface", position=0), ROOT,
    ), _print_dns_info, aliases=("get-dns-info",)),
    Command("hv_set_ifconfig", "Install (and apply) the configuration the host injected.", (
        Param("Ifcfg", required=True, position=0, help="the ifcfg-IF file"),
        Param("NmConnection", required=True, position=1, help="the IF.nmconnection file"),
        ROOT, Param("NoApply", "switch", help="install only, do not apply"),
    ), _set_ifconfig, aliases=("set-ifconfig",)),
)


def _script_main(cmd: Command, prog: str, argv: list[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: run_command(cmd, words), lambda exc: prog)


def dhcp_main(argv: list[str] | None = None) -> int:
    """``hv_get_dhcp_info IFNAME``."""
    return _script_main(COMMANDS[0], "vmis-hv-get-dhcp-info", argv)


def dns_main(argv: list[str] | None = None) -> int:
    """``hv_get_dns_info [IFNAME]``."""
    return _script_main(COMMANDS[1], "vmis-hv-get-dns-info", argv)


def set_ifconfig_main(argv: list[str] | None = None) -> int:
    """``hv_set_ifconfig IFCFG NMCONNECTION``."""
    return _script_main(COMMANDS[2], "vmis-hv-set-ifconfig", argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m vmis.hyperv.scripts get-dhcp-info|get-dns-info|set-ifconfig ...``."""
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] in HELP_WORDS:
        print("usage: python -m vmis.hyperv.scripts "
              "get-dhcp-info|get-dns-info|set-ifconfig ...", file=sys.stderr)
        return 0 if words else 2
    prog = "python -m vmis.hyperv.scripts"
    return run_main(lambda: run_command(*find_verb(COMMANDS, words)), lambda exc: prog)


if __name__ == "__main__":
    sys.exit(main())
