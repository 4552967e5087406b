"""Discovery of QMP socket, agent channel and vsock CID from QEMU command lines and libvirt XML."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmis.errors import ConfigError, NotFoundError
from vmis.qemu.discovery import (
    discover_from_cmdline,
    discover_from_libvirt_xml,
    discover_from_pid,
    libvirt_short_name,
    parse_qemu_opts,
)

# Section: option syntax


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socket,id=c0,path=/run/a.sock", {"type": "socket", "id": "c0", "path": "/run/a.sock"}),
        (
            "socket,id=c0,path=/run/a,,b.sock",
            {"type": "socket", "id": "c0", "path": "/run/a,b.sock"},
        ),
        (
            "socket,id=c0,server,nowait",
            {"type": "socket", "id": "c0", "server": "on", "wait": "off"},
        ),
        ("id=c0,,x", {"id": "c0,x"}),
        ("", {}),
        (
            '{"driver":"virtserialport","chardev":"charchannel0","name":"org.vmis.agent.0"}',
            {
                "driver": "virtserialport",
                "type": "virtserialport",
                "chardev": "charchannel0",
                "name": "org.vmis.agent.0",
            },
        ),
    ],
)
def test_parse_qemu_opts(text: str, expected: dict[str, object]) -> None:
    assert parse_qemu_opts(text) == expected


def test_parse_qemu_opts_rejects_bad_json() -> None:
    with pytest.raises(ConfigError, match="bad JSON option"):
        parse_qemu_opts('{"driver": ')


# Section: command lines

HAND_WRITTEN = (
    "qemu-system-x86_64 -enable-kvm -m 2048 -name guest=web1,debug-threads=on "
    "-drive file=/var/vm/web1.qcow2,if=virtio "
    "-qmp unix:/run/vm/web1-qmp.sock,server,nowait "
    "-device virtio-serial "
    "-chardev socket,path=/run/vm/web1-agent.sock,server=on,wait=off,id=vmis0 "
    "-device virtserialport,chardev=vmis0,name=org.vmis.agent.0 "
    "-device vhost-vsock-pci,guest-cid=21"
)

# The shape of a command line libvirt 9 generates: JSON -device, sockets passed as fds.
LIBVIRT_STYLE = [
    "/usr/bin/qemu-system-x86_64",
    "-name", "guest=db2,debug-threads=on",
    "-chardev", "socket,id=charmonitor,fd=31,server=on,wait=off",
    "-mon", "chardev=charmonitor,id=monitor,mode=control",
    "-chardev", "socket,id=charchannel0,fd=35,server=on,wait=off",
    "-device",
    '{"driver":"virtserialport","bus":"virtio-serial0.0","nr":1,"chardev":"charchannel0",'
    '"id":"channel0","name":"org.vmis.agent.0"}',
    "-device", '{"driver":"vhost-vsock-pci","id":"vsock0","guest-cid":5,"vhostfd":"36"}',
]  # fmt: skip


def test_hand_written_command_line() -> None:
    found = discover_from_cmdline(HAND_WRITTEN)
    assert found.name == "web1"
    assert found.qmp == Path("/run/vm/web1-qmp.sock")
    assert found.channel == Path("/run/vm/web1-agent.sock")
    assert found.channel_chardev == "vmis0"
    assert found.vsock_cid == 21
    assert found.notes == ()


def test_libvirt_style_fd_sockets_need_the_fd_table() -> None:
    found = discover_from_cmdline(LIBVIRT_STYLE)
    assert found.name == "db2"
    assert found.vsock_cid == 5
    assert found.channel_chardev == "charchannel0"
    assert found.qmp is None and found.channel is None
    assert any("fd 31" in note for note in found.notes)
    assert any("fd 35" in note for note in found.notes)

    resolved = discover_from_cmdline(
        LIBVIRT_STYLE, fd_paths={31: Path("/m.sock"), 35: Path("/c.sock")}
    )
    assert (resolved.qmp, resolved.channel) == (Path("/m.sock"), Path("/c.sock"))
    assert resolved.notes == ()


def test_hmp_monitors_and_other_ports_are_not_taken() -> None:
    found = discover_from_cmdline(
        "qemu -chardev socket,id=m,path=/hmp.sock,server=on,wait=off -mon chardev=m "
        "-chardev socket,id=o,path=/other.sock,server=on,wait=off "
        "-device virtserialport,chardev=o,name=com.example.other.0"
    )
    assert found.qmp is None and found.channel is None
    assert any("no QMP monitor" in note for note in found.notes)
    assert any("no virtserialport named org.vmis.agent.0" in note for note in found.notes)


QGA_ONLY = (
    "qemu-system-x86_64 -name guest=db1 -qmp unix:/run/vm/db1.qmp,server,nowait "
    "-device virtio-serial-pci "
    "-chardev socket,path=/run/vm/db1.qga,server=on,wait=off,id=qga0 "
    "-device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"
)


def test_a_vm_with_only_qemu_ga_is_offered_as_a_qemu_ga_guest() -> None:
    found = discover_from_cmdline(QGA_ONLY)
    assert (found.channel, found.guest_agent, found.channel_chardev) == (
        Path("/run/vm/db1.qga"), "qemu-ga", "qga0")
    assert any("using qemu-ga's port org.qemu.guest_agent.0" in note for note in found.notes)


def test_the_vmis_port_wins_over_qemu_ga() -> None:
    both = HAND_WRITTEN + (" -chardev socket,path=/run/vm/web1.qga,server=on,wait=off,id=q "
                           "-device virtserialport,chardev=q,name=org.qemu.guest_agent.0")
    found = discover_from_cmdline(both)
    assert (found.channel, found.guest_agent) == (Path("/run/vm/web1-agent.sock"), "vmis")
    assert found.notes == ()


def test_relative_paths_resolve_against_qemu_cwd_and_tcp_is_reported() -> None:
    found = discover_from_cmdline(
        [
            "qemu", "--qmp", "unix:qmp.sock,server=on,wait=off",
            "-chardev", "socket,id=a,host=127.0.0.1,port=4444,server=on,wait=off",
            "-device", "virtserialport,chardev=a,name=org.vmis.agent.0",
        ],
        cwd=Path("/srv/vm"),
    )  # fmt: skip
    assert found.qmp == Path("/srv/vm/qmp.sock")
    assert found.channel is None
    assert any("not a Unix socket" in note for note in found.notes)


def test_undefined_chardev_is_reported() -> None:
    found = discover_from_cmdline("qemu -device virtserialport,chardev=nope,name=org.vmis.agent.0")
    assert found.channel is None
    assert any("'nope' is not defined" in note for note in found.notes)


def _fake_proc(root: Path, pid: int, argv: list[str], fds: dict[int, str], unix: list[str]) -> None:
    base = root / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    os.symlink("/srv/vm", base / "cwd")
    for fd, target in fds.items():
        os.symlink(target, base / "fd" / str(fd))  # dangling, like socket:[inode] links
    (root / "net").mkdir(exist_ok=True)
    header = "Num       RefCount Protocol Flags    Type St Inode Path\n"
    (root / "net" / "unix").write_text(header + "".join(line + "\n" for line in unix))


def test_discover_from_pid_follows_passed_fds(tmp_path: Path) -> None:
    _fake_proc(
        tmp_path, 4242, LIBVIRT_STYLE,
        fds={31: "socket:[1001]", 35: "socket:[1002]", 36: "/dev/vhost-vsock"},
        unix=[
            "0000000000000000: 00000002 00000000 00010000 0001 01 1001 "
            "/var/lib/libvirt/qemu/domain-3-db2/monitor.sock",
            "0000000000000000: 00000002 00000000 00010000 0001 01 1002 "
            "/var/lib/libvirt/qemu/channel/target/domain-3-db2/org.vmis.agent.0",
            "0000000000000000: 00000003 00000000 00000000 0001 03 1003",
        ],
    )  # fmt: skip
    found = discover_from_pid(4242, proc=tmp_path)
    assert found.pid == 4242
    assert found.qmp == Path("/var/lib/libvirt/qemu/domain-3-db2/monitor.sock")
    assert found.channel == Path(
        "/var/lib/libvirt/qemu/channel/target/domain-3-db2/org.vmis.agent.0"
    )
    assert found.notes == ()


def test_discover_from_pid_of_a_missing_process(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no readable process 7"):
        discover_from_pid(7, proc=tmp_path)


def test_discover_from_own_process_reads_real_proc() -> None:
    # This test process is no QEMU: everything is reported missing, nothing raises.
    found = discover_from_pid(os.getpid())
    assert found.pid == os.getpid()
    assert found.qmp is None and found.channel is None
    assert found.notes


# Section: libvirt domain XML

LIVE_XML = """
<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>a-rather-long-domain-name-for-testing</name>
  <devices>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/qga.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
      <alias name='channel0'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/run/vmis/vm7.agent'/>
      <target type='virtio' name='org.vmis.agent.0' state='connected'/>
      <alias name='channel1'/>
    </channel>
    <vsock model='virtio'>
      <cid auto='no' address='9'/>
    </vsock>
  </devices>
</domain>
"""


def test_live_domain_xml() -> None:
    found = discover_from_libvirt_xml(LIVE_XML, state_dir=Path("/state"))
    assert found.name == "a-rather-long-domain-name-for-testing"
    assert found.channel == Path("/run/vmis/vm7.agent")
    assert found.channel_chardev == "charchannel1"
    assert found.vsock_cid == 9
    # libvirt's own monitor, in the directory named with the 20-character short name.
    assert found.qmp == Path("/state/domain-7-a-rather-long-domain/monitor.sock")
    assert any("libvirt keeps connected" in note for note in found.notes)
    assert libvirt_short_name("a-rather-long-domain-name-for-testing") == "a-rather-long-domain"


def test_extra_qmp_from_qemu_commandline_is_preferred() -> None:
    xml = LIVE_XML.replace(
        "</devices>",
        "</devices><qemu:commandline><qemu:arg value='-qmp'/>"
        "<qemu:arg value='unix:/run/vmis/vm7.qmp,server=on,wait=off'/></qemu:commandline>",
    )
    found = discover_from_libvirt_xml(xml)
    assert found.qmp == Path("/run/vmis/vm7.qmp")
    assert not any("libvirt keeps connected" in note for note in found.notes)


def test_live_domain_without_explicit_channel_path_gets_libvirts_generated_one() -> None:
    xml = LIVE_XML.replace(
        "<source mode='bind' path='/run/vmis/vm7.agent'/>", "<source mode='bind'/>"
    )
    found = discover_from_libvirt_xml(xml, state_dir=Path("/state"))
    assert found.channel == Path(
        "/state/channel/target/domain-7-a-rather-long-domain/org.vmis.agent.0"
    )


def test_inactive_domain_xml() -> None:
    xml = (
        LIVE_XML.replace(" id='7'", "")
        .replace("<source mode='bind' path='/run/vmis/vm7.agent'/>", "<source mode='bind'/>")
        .replace("<cid auto='no' address='9'/>", "<cid auto='yes'/>")
    )
    found = discover_from_libvirt_xml(xml)
    assert found.qmp is None and found.channel is None and found.vsock_cid is None
    assert any("chosen by libvirt when the domain starts" in note for note in found.notes)
    assert any("not running" in note for note in found.notes)


def test_connect_mode_channel_is_flagged() -> None:
    xml = LIVE_XML.replace("mode='bind' path='/run/vmis/vm7.agent'", "mode='connect' path='/x'")
    found = discover_from_libvirt_xml(xml)
    assert found.channel == Path("/x")
    assert any("mode='connect'" in note for note in found.notes)


def test_a_domain_with_only_qemu_ga_is_a_qemu_ga_guest_with_libvirts_caveat() -> None:
    start = LIVE_XML.index("    <channel type='unix'>\n      <source mode='bind' path='/run/vmis")
    end = LIVE_XML.index("</channel>", start) + len("</channel>\n")
    found = discover_from_libvirt_xml(LIVE_XML[:start] + LIVE_XML[end:], state_dir=Path("/s"))
    assert found.channel == Path("/var/lib/libvirt/qemu/channel/target/qga.0")
    assert (found.guest_agent, found.channel_chardev) == ("qemu-ga", "charchannel0")
    assert any("libvirt connects to that channel itself" in note for note in found.notes)


def test_domain_without_agent_channel() -> None:
    found = discover_from_libvirt_xml("<domain type='kvm'><name>n</name><devices/></domain>")
    assert found.channel is None
    assert any("no <channel>" in note for note in found.notes)


@pytest.mark.parametrize("xml", ["<domain", "<network><name>x</name></network>"])
def test_not_a_domain_xml(xml: str) -> None:
    with pytest.raises(ConfigError, match="not a libvirt domain XML"):
        discover_from_libvirt_xml(xml)
