"""Helper scripts (hv_get_dhcp_info, hv_get_dns_info, hv_set_ifconfig) on fixture
trees, the netlink reader, and the daemon plumbing (pid file, log holder)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.logs import KeptRecords

from vmis.errors import ConfigError, StateError
from vmis.hyperv.daemon import HoldableHandler, PidFile, StopSignal
from vmis.hyperv.netinfo import NetlinkInfo
from vmis.hyperv.scripts import (
    ROOT_ENV,
    dhcp_main,
    dns_main,
    get_dhcp_info,
    get_dns_info,
    set_ifconfig,
    set_ifconfig_main,
)

WAIT = 30.0


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# Section: hv_get_dhcp_info


def test_dhcp_from_networkmanager(tmp_path: Path):
    write(tmp_path, "etc/NetworkManager/system-connections/a.nmconnection",
          "[connection]\ninterface-name=eth0\n[ipv4]\nmethod=manual\naddress1=10.0.0.2/24\n")
    write(tmp_path, "etc/NetworkManager/system-connections/b.nmconnection",
          "[connection]\ninterface-name=eth1\n[ipv4]\nmethod=auto\n")
    assert get_dhcp_info("eth0", tmp_path) == "Disabled"
    assert get_dhcp_info("eth1", tmp_path) == "Enabled"


def test_dhcp_from_networkd_ifcfg_ifupdown_netplan(tmp_path: Path):
    write(tmp_path, "etc/systemd/network/10-eth0.network",
          "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    write(tmp_path, "etc/sysconfig/network-scripts/ifcfg-eth1", "DEVICE=eth1\nBOOTPROTO=dhcp\n")
    write(tmp_path, "etc/network/interfaces", "auto eth2\niface eth2 inet static\n")
    write(tmp_path, "etc/netplan/50-cloud-init.yaml",
          "network:\n  ethernets:\n    eth3:\n      dhcp4: true\n    eth4:\n      addresses: []\n")
    assert get_dhcp_info("eth0", tmp_path) == "Enabled"
    assert get_dhcp_info("eth1", tmp_path) == "Enabled"
    assert get_dhcp_info("eth2", tmp_path) == "Disabled"
    assert get_dhcp_info("eth3", tmp_path) == "Enabled"
    assert get_dhcp_info("eth4", tmp_path) == "Disabled"
    assert get_dhcp_info("eth9", tmp_path) == "Disabled"


# Section: hv_get_dns_info


def test_dns_plain_and_behind_resolved(tmp_path: Path):
    write(tmp_path, "etc/resolv.conf", "# x\nnameserver 10.1.1.1\nnameserver fd00::53\n")
    assert get_dns_info(tmp_path) == ["10.1.1.1", "fd00::53"]
    write(tmp_path, "etc/resolv.conf", "nameserver 127.0.0.53\noptions edns0\n")
    write(tmp_path, "run/systemd/resolve/resolv.conf", "nameserver 192.0.2.53\n")
    assert get_dns_info(tmp_path) == ["192.0.2.53"]
    assert get_dns_info(tmp_path / "empty") == []


# Section: hv_set_ifconfig

NM = """[connection]
id=eth0
type=ethernet
interface-name=eth0

[ethernet]
mac-address=00:15:5D:01:02:03

[ipv4]
method=manual
address1=10.0.0.9/24
gateway=10.0.0.1
dns=1.1.1.1;

[ipv6]
method=auto
"""


def test_set_ifconfig_networkmanager(tmp_path: Path):
    root = tmp_path / "root"
    (root / "etc/NetworkManager").mkdir(parents=True)
    (root / "etc/sysconfig/network-scripts").mkdir(parents=True)
    ifcfg = write(tmp_path, "in/ifcfg-eth0", "DEVICE=eth0\nBOOTPROTO=none\n")
    nm = write(tmp_path, "in/eth0.nmconnection", NM)
    written = set_ifconfig(ifcfg, nm, root, apply=True)  # root is not "/": never applied
    installed = root / "etc/NetworkManager/system-connections/eth0.nmconnection"
    assert set(written) == {installed, root / "etc/sysconfig/network-scripts/ifcfg-eth0"}
    text = installed.read_text()
    assert text.splitlines()[:2] == ["[connection]", "autoconnect=true"]
    assert installed.stat().st_mode & 0o777 == 0o600


def test_set_ifconfig_networkd(tmp_path: Path):
    root = tmp_path / "root"
    (root / "etc/systemd/network").mkdir(parents=True)
    ifcfg = write(tmp_path, "in/ifcfg-eth0", "DEVICE=eth0\n")
    nm = write(tmp_path, "in/eth0.nmconnection", NM)
    (unit,) = set_ifconfig(ifcfg, nm, root)
    assert unit.name == "70-hyperv-eth0.network"
    assert unit.read_text().splitlines() == [
        "[Match]", "Name=eth0", "", "[Network]", "DHCP=ipv6", "Address=10.0.0.9/24",
        "Gateway=10.0.0.1", "DNS=1.1.1.1",
    ]


def test_set_ifconfig_errors(tmp_path: Path):
    nm = write(tmp_path, "in/eth0.nmconnection", NM)
    with pytest.raises(ConfigError):
        set_ifconfig(tmp_path / "missing", nm, tmp_path / "root")
    ifcfg = write(tmp_path, "in/ifcfg-eth0", "x\n")
    with pytest.raises(ConfigError, match="no supported network configuration"):
        set_ifconfig(ifcfg, nm, tmp_path / "root")


def test_script_command_lines(tmp_path: Path):
    write(tmp_path, "etc/resolv.conf", "nameserver 10.9.9.9\n")
    write(tmp_path, "etc/network/interfaces", "iface eth0 inet dhcp\n")
    env = {**os.environ, ROOT_ENV: str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmis.hyperv.scripts", *args], env=env,
                              capture_output=True, text=True, timeout=WAIT, check=False)

    assert run("hv_get_dhcp_info", "eth0").stdout == "Enabled\n"
    assert run("get-dns-info", "eth0").stdout == "10.9.9.9\n"
    bad = run("set-ifconfig", str(tmp_path / "x"), str(tmp_path / "y"), "--no-apply")
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1
    assert run().returncode == 2


def test_script_parameters_in_both_spellings(tmp_path: Path, capsys):
    write(tmp_path, "etc/resolv.conf", "nameserver 10.9.9.9\n")
    write(tmp_path, "etc/network/interfaces", "iface eth0 inet dhcp\n")
    assert dhcp_main(["eth0", "--root", str(tmp_path)]) == 0
    assert dns_main(["-Root", str(tmp_path)]) == 0
    assert dhcp_main(["-Interface", "eth1", "-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "Enabled\n10.9.9.9\nDisabled\n"
    assert set_ifconfig_main(["only-one"]) == 2
    assert capsys.readouterr().err == (
        "vmis-hv-set-ifconfig: hv_set_ifconfig: missing mandatory parameter -NmConnection.\n")


# Section: netlink


def test_netlink_sees_loopback():
    info = NetlinkInfo()
    lo = [i for i in info.interfaces() if i.loopback]
    assert lo and lo[0].index == socket.if_nametoindex(lo[0].name)
    addrs = info.addresses()
    assert any(a.address == "127.0.0.1" and a.loopback and a.prefixlen == 8 for a in addrs)
    assert all(a.family in (socket.AF_INET, socket.AF_INET6) for a in addrs)
    assert info.default_gateways(lo[0].name, socket.AF_INET) == []
    assert info.default_gateways("no-such-if0", socket.AF_INET) == []


# Section: daemon plumbing


def test_pid_file(tmp_path: Path):
    path = tmp_path / "run/d.pid"
    pid = PidFile(path)
    with pid.held():
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()
    path.write_text("999999999\n")  # stale: no such process
    pid.acquire()
    assert path.read_text().strip() == str(os.getpid())
    pid.release()
    path.write_text("1\n")  # pid 1 is alive
    with pytest.raises(StateError, match="already running as pid 1"):
        pid.acquire()
    assert path.read_text() == "1\n"
    pid.release()  # not ours: left alone
    assert path.exists()
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:
        with pytest.raises(ConfigError):
            PidFile(tmp_path / "ro/x.pid").acquire()


def test_holdable_handler_holds_and_bounds(tmp_path: Path):
    sink = KeptRecords()
    holder = HoldableHandler(sink, limit=3)
    log = logging.getLogger("vmis.hyperv.test.holder")
    log.handlers[:] = [holder]
    log.propagate = False
    log.setLevel(logging.INFO)
    log.info("before")
    holder.hold()
    for i in range(5):
        log.info("held %d", i)
    assert sink.messages() == ["before"]
    holder.resume()
    assert sink.messages() == ["before", "2 log records dropped while frozen",
                             "held 2", "held 3", "held 4"]
    log.info("after")
    assert sink.messages()[-1] == "after" and not holder.holding


def test_stop_signal_wakes_a_wait():
    stop = StopSignal()
    r, w = os.pipe()
    try:
        threading.Timer(0.1, stop.set).start()
        assert stop.wait_readable(r, WAIT) is False
        assert stop.is_set()
        assert stop.wait_readable(r, None) is False  # stays set
    finally:
        os.close(r)
        os.close(w)
        stop.close()
