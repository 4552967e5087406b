"""KVP GET_IP_INFO / SET_IP_INFO: report and inject a NIC's IP configuration.

The host names a NIC by MAC address (GET) or by its VMBus device GUID (SET);
both are matched against ``<root>/sys/class/net/*`` as the C daemon does
(facts 3.6).  Addresses come from :mod:`vmis.hyperv.netinfo`; DHCP state and
DNS servers from the helper scripts, and an injected configuration is written
as ``ifcfg-IF`` and ``IF.nmconnection`` into the config directory and handed
to ``hv_set_ifconfig`` -- the C daemon's interface, so the distribution's
scripts and :mod:`vmis.hyperv.scripts` are interchangeable.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vmis.hyperv.constants import AddrFamily, HResult
from vmis.hyperv.netinfo import NetInfo

__all__ = ["HelperScripts", "IpConfig", "IpInfo"]

#: Seconds a helper may take; the kernel gives the whole request 30 s.
SCRIPT_TIMEOUT = 20.0


class HelperScripts:
    """Runs ``hv_get_dhcp_info``, ``hv_get_dns_info`` and ``hv_set_ifconfig``.

    :param directory: where the scripts are (the C daemon's
        ``/usr/libexec/hypervkvpd``); ``None`` runs the Python equivalents
        (``python -m vmis.hyperv.scripts``) with the same arguments.
    :param env: extra environment for the scripts (e.g. ``VMIS_HV_ROOT``).
    """

    def __init__(self, directory: Path | None = None, env: dict[str, str] | None = None) -> None:
        self._dir = directory
        self._env = {**os.environ, **(env or {})}

    def _argv(self, name: str, args: list[str]) -> list[str]:
        if self._dir is None:
            return [sys.executable, "-m", "vmis.hyperv.scripts", name, *args]
        return [str(self._dir / name), *args]

    def _run(self, name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._argv(name, args), capture_output=True, text=True, check=False,
            timeout=SCRIPT_TIMEOUT, env=self._env, stdin=subprocess.DEVNULL,
        )

    def dhcp_enabled(self, ifname: str) -> bool:
        """``hv_get_dhcp_info IF`` printed something starting with ``Enabled``."""
        try:
            return self._run("hv_get_dhcp_info", [ifname]).stdout.startswith("Enabled")
        except (OSError, subprocess.SubprocessError):
            return False

    def dns_servers(self, ifname: str) -> list[str]:
        """``hv_get_dns_info IF``, one server per line."""
        try:
            out = self._run("hv_get_dns_info", [ifname]).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [line.strip() for line in out.splitlines() if line.strip()]

    def set_ifconfig(self, ifcfg: Path, nmconnection: Path) -> tuple[int, str]:
        """``hv_set_ifconfig IFCFG NMCONNECTION``: exit status and stderr."""
        try:
            done = self._run("hv_set_ifconfig", [str(ifcfg), str(nmconnection)])
        except (OSError, subprocess.SubprocessError) as err:
            return 1, str(err)
        return done.returncode, done.stderr.strip()


@dataclass(frozen=True, slots=True)
class IpInfo:
    """A NIC's IP configuration, as the KVP IP messages carry it (UTF-8 side)."""

    #: MAC (GET) or VMBus device GUID (SET)
    adapter_id: str
    addr_family: int = 0
    dhcp_enabled: bool = False
    #: ``;``-separated lists
    ip_addr: str = ""
    sub_net: str = ""
    gate_way: str = ""
    dns_addr: str = ""


def _norm_mac(mac: str) -> str:
    return mac.strip().upper().replace("-", ":")


def _norm_guid(guid: str) -> str:
    return guid.strip().strip("{}").lower()


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(";") if p.strip()]


class IpConfig:
    """Serves GET_IP_INFO and SET_IP_INFO.

    :param net: interface and address source.
    :param scripts: the helper scripts.
    :param root: where ``/sys/class/net`` is read.
    :param config_dir: where ``ifcfg-IF`` / ``IF.nmconnection`` are written
        (the C daemon's ``/var/lib/hyperv``).
    """

    def __init__(self, net: NetInfo, scripts: HelperScripts, root: Path = Path("/"),
                 config_dir: Path = Path("/var/lib/hyperv")) -> None:
        self._net = net
        self._scripts = scripts
        self._root = root
        self._config_dir = config_dir

    def _sys_net(self) -> list[Path]:
        try:
            return sorted((self._root / "sys/class/net").iterdir())
        except OSError:
            return []

    def _read(self, path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def interfaces_with_mac(self, mac: str) -> list[str]:
        """Interface names whose ``address`` equals ``mac`` (case and ``-``/``:`` ignored)."""
        want = _norm_mac(mac)
        return [p.name for p in self._sys_net() if _norm_mac(self._read(p / "address")) == want]

    def interface_of_guid(self, guid: str) -> str | None:
        """The interface whose ``device/device_id`` is the VMBus GUID ``guid``."""
        want = _norm_guid(guid)
        for p in self._sys_net():
            if _norm_guid(self._read(p / "device/device_id")) == want and want:
                return p.name
        return None

    def get(self, adapter_id: str) -> tuple[int, IpInfo | None]:
        """GET_IP_INFO for the NIC with MAC ``adapter_id``.

        :return: ``(HV_S_OK, info)``, or ``(HV_E_FAIL, None)`` when no NIC with
            an address has that MAC (a VF sharing the MAC but without an IP is
            skipped, as in the C daemon).
        """
        addresses = self._net.addresses()
        for ifname in self.interfaces_with_mac(adapter_id):
            mine = [a for a in addresses if a.ifname == ifname and not a.loopback]
            if not mine:
                continue
            family = AddrFamily.NONE
            ips, masks = [], []
            for a in mine:
                if a.family == socket.AF_INET:
                    family |= AddrFamily.IPV4
                    masks.append(str(ipaddress.IPv4Network(f"0.0.0.0/{a.prefixlen}").netmask))
                else:
                    family |= AddrFamily.IPV6
                    masks.append(f"/{a.prefixlen}")
                ips.append(a.address)
            gateways = self._net.default_gateways(ifname, socket.AF_INET) + \
                self._net.default_gateways(ifname, socket.AF_INET6)
            return HResult.HV_S_OK, IpInfo(
                adapter_id=adapter_id,
                addr_family=int(family),
                dhcp_enabled=self._scripts.dhcp_enabled(ifname),
                ip_addr=";".join(ips),
                sub_net=";".join(masks),
                gate_way=";".join(gateways),
                dns_addr=";".join(self._scripts.dns_servers(ifname)),
            )
        return HResult.HV_E_FAIL, None

    def set(self, info: IpInfo) -> int:
        """SET_IP_INFO: write the configuration files and run ``hv_set_ifconfig``.

        :return: HV_S_OK; HV_GUID_NOTFOUND when the GUID maps to no NIC;
            HV_INVALIDARG for a malformed address; HV_E_FAIL when the files
            cannot be written or the script fails.
        """
        ifname = self.interface_of_guid(info.adapter_id)
        if ifname is None:
            return HResult.HV_GUID_NOTFOUND
        try:
            v4, v6 = self._addresses(info)
            gateways = [ipaddress.ip_address(g) for g in _split(info.gate_way)]
            dns = [ipaddress.ip_address(d) for d in _split(info.dns_addr)]
        except ValueError:
            return HResult.HV_INVALIDARG
        plan = _Plan(
            ifname=ifname,
            mac=self._read(self._root / "sys/class/net" / ifname / "address").upper(),
            dhcp=info.dhcp_enabled, v4=v4, v6=v6, gateways=gateways, dns=dns,
        )
        ifcfg, nm = plan.ifcfg(), plan.nmconnection()
        ifcfg_path = self._config_dir / f"ifcfg-{ifname}"
        nm_path = self._config_dir / f"{ifname}.nmconnection"
        try:
            self._config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            ifcfg_path.write_text(ifcfg, encoding="utf-8")
            nm_path.write_text(nm, encoding="utf-8")
            os.chmod(nm_path, 0o600)
        except OSError:
            return HResult.HV_E_FAIL
        status, _ = self._scripts.set_ifconfig(ifcfg_path, nm_path)
        return HResult.HV_S_OK if status == 0 else HResult.HV_E_FAIL

    @staticmethod
    def _addresses(
        info: IpInfo,
    ) -> tuple[list[ipaddress.IPv4Interface], list[ipaddress.IPv6Interface]]:
        ips, masks = _split(info.ip_addr), _split(info.sub_net)
        v4: list[ipaddress.IPv4Interface] = []
        v6: list[ipaddress.IPv6Interface] = []
        for i, ip in enumerate(ips):
            mask = masks[i] if i < len(masks) else ""
            addr = ipaddress.ip_address(ip)
            if isinstance(addr, ipaddress.IPv4Address):
                v4.append(ipaddress.IPv4Interface(f"{ip}/{mask or 32}"))
            else:
                v6.append(ipaddress.IPv6Interface(f"{ip}/{mask.lstrip('/') or 64}"))
        return v4, v6


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class _Plan:
    """An injected configuration, rendered as ifcfg and NetworkManager keyfile."""

    ifname: str
    mac: str
    dhcp: bool
    v4: list[ipaddress.IPv4Interface]
    v6: list[ipaddress.IPv6Interface]
    gateways: list[_Address]
    dns: list[_Address]

    def ifcfg(self) -> str:
        """``ifcfg-IF`` in the keys the C daemon writes."""
        lines = [f"HWADDR={self.mac}", f"DEVICE={self.ifname}",
                 f"BOOTPROTO={'dhcp' if self.dhcp else 'none'}"]
        if not self.dhcp:
            for i, a in enumerate(self.v4):
                n = "" if i == 0 else str(i)
                lines += [f"IPADDR{n}={a.ip}", f"NETMASK{n}={a.netmask}"]
            if self.v6:
                lines += ["IPV6INIT=yes", f"IPV6ADDR={self.v6[0]}"]
                if len(self.v6) > 1:
                    rest = " ".join(str(a) for a in self.v6[1:])
                    lines.append(f'IPV6ADDR_SECONDARIES="{rest}"')
            gw4 = [g for g in self.gateways if g.version == 4]
            gw6 = [g for g in self.gateways if g.version == 6]
            for i, g in enumerate(gw4):
                lines.append(f"GATEWAY{'' if i == 0 else i}={g}")
            if gw6:
                lines.append(f"IPV6_DEFAULTGW={gw6[0]}")
            lines += [f"DNS{i + 1}={d}" for i, d in enumerate(self.dns)]
        return "\n".join(lines) + "\n"

    def nmconnection(self) -> str:
        """``IF.nmconnection``, a NetworkManager keyfile."""
        lines = ["[connection]", f"id={self.ifname}", "type=ethernet",
                 f"interface-name={self.ifname}", "", "[ethernet]",
                 f"mac-address={self.mac}", ""]
        families: tuple[tuple[str, int, list[ipaddress.IPv4Interface]
                              | list[ipaddress.IPv6Interface]], ...] = (
            ("ipv4", 4, self.v4), ("ipv6", 6, self.v6))
        for family, version, addrs in families:
            lines.append(f"[{family}]")
            if self.dhcp or not addrs:
                lines.append("method=auto")
            else:
                lines.append("method=manual")
                lines += [f"address{i + 1}={a}" for i, a in enumerate(addrs)]
                gw = [g for g in self.gateways if g.version == version]
                if gw:
                    lines.append(f"gateway={gw[0]}")
                servers = [str(d) for d in self.dns if d.version == version]
                if servers:
                    lines.append("dns=" + ";".join(servers) + ";")
            lines.append("")
        return "\n".join(lines)
