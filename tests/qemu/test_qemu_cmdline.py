"""The QEMU command line of a vmis machine (pure; no QEMU needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from vmis.errors import ConfigError
from vmis.qemu.cmdline import (
    AGENT_PORT_NAME,
    QGA_PORT_NAME,
    BootSpec,
    DiskMode,
    MachineConfig,
    MachinePaths,
    build_command,
    qemu_escape,
    rtc_base,
)
from vmis.qemu.discovery import discover_from_cmdline, parse_qemu_opts

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def boot(tmp: Path) -> BootSpec:
    return BootSpec(
        kernel=tmp / "vmlinux",
        initrd=tmp / "initrd.img",
        append="console=ttyS0 root=/dev/vda",
        firmware=Path("/usr/share/qemu/qboot.rom"),
        disk=tmp / "rootfs.ext4",
    )


def command(tmp: Path, **overrides: object) -> list[str]:
    config = MachineConfig(name="vm1", boot=boot(tmp), **overrides)  # type: ignore[arg-type]
    return build_command(config, MachinePaths(tmp / "work"), now=NOW)


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == option]


def devices(argv: list[str]) -> dict[str, dict[str, object]]:
    """-device options by driver (the last of each driver wins)."""
    return {
        str(opts["driver"]): opts
        for opts in (parse_qemu_opts(v, implied="driver") for v in values(argv, "-device"))
    }


def test_default_machine_layout(tmp_path: Path) -> None:
    argv = command(tmp_path)
    assert argv[0] == "qemu-system-x86_64"
    assert values(argv, "-accel") == ["tcg"]
    assert values(argv, "-m") == ["512"]
    assert "-nodefaults" in argv
    assert values(argv, "-kernel") == [str(tmp_path / "vmlinux")]
    assert values(argv, "-initrd") == [str(tmp_path / "initrd.img")]
    assert values(argv, "-bios") == ["/usr/share/qemu/qboot.rom"]
    assert values(argv, "-append") == ["console=ttyS0 root=/dev/vda"]
    found = devices(argv)
    ports = {str(opts["name"]): opts for opts in (
        parse_qemu_opts(v, implied="driver") for v in values(argv, "-device"))
        if opts["driver"] == "virtserialport"}
    assert set(ports) == {AGENT_PORT_NAME, QGA_PORT_NAME}
    chardevs = {str(o["id"]): o for o in (parse_qemu_opts(v) for v in values(argv, "-chardev"))}
    for name, socket in ((AGENT_PORT_NAME, "agent.sock"), (QGA_PORT_NAME, "qga.sock")):
        # the vmis agent's port, and qemu-ga's beside it (docs/guest-links.md)
        agent = chardevs[str(ports[name]["chardev"])]
        assert agent["type"] == "socket"
        assert agent["path"] == str(tmp_path / "work" / socket)
        assert (agent["server"], agent["wait"]) == ("on", "off")
    assert "virtio-net-pci" in found and "ide-cd" in found
    assert "vhost-vsock-pci" not in found
    assert values(argv, "-netdev") == ["user,id=net0,restrict=on"]
    assert values(argv, "-rtc") == ["base=utc,clock=host"]
    assert "-no-reboot" not in argv


def test_root_disk_is_snapshot_by_default_and_overlay_on_request(tmp_path: Path) -> None:
    (drive,) = [v for v in values(command(tmp_path), "-drive") if "id=root" in v]
    opts = parse_qemu_opts(drive, implied="file")
    assert opts["file"] == str(tmp_path / "rootfs.ext4")
    assert opts["snapshot"] == "on" and opts["format"] == "raw"

    argv = command(tmp_path, disk_mode=DiskMode.OVERLAY)
    (drive,) = [v for v in values(argv, "-drive") if "id=root" in v]
    opts = parse_qemu_opts(drive, implied="file")
    assert opts["file"] == str(tmp_path / "work" / "disk.qcow2")
    assert opts["format"] == "qcow2" and "snapshot" not in opts


def test_overlay_argument_names_the_current_top_image(tmp_path: Path) -> None:
    config = MachineConfig(name="vm1", boot=boot(tmp_path), disk_mode=DiskMode.OVERLAY)
    argv = build_command(config, MachinePaths(tmp_path), now=NOW, overlay=tmp_path / "disk-1.qcow2")
    assert any(v.startswith(f"file={tmp_path / 'disk-1.qcow2'},") for v in values(argv, "-drive"))


def test_options_switch_devices(tmp_path: Path) -> None:
    argv = command(
        tmp_path, network=False, cdrom=False, vsock_cid=42, no_reboot=True, accel="kvm",
        memory_mib=1024, cpus=2, extra_append=("quiet",), extra_args=("-snapshot",),
    )  # fmt: skip
    found = devices(argv)
    assert "virtio-net-pci" not in found and "ide-cd" not in found
    assert found["vhost-vsock-pci"]["guest-cid"] == "42"
    assert "-no-reboot" in argv
    assert values(argv, "-accel") == ["kvm"] and values(argv, "-cpu") == ["host"]
    assert values(argv, "-m") == ["1024"] and values(argv, "-smp") == ["2"]
    assert values(argv, "-append") == ["console=ttyS0 root=/dev/vda quiet"]
    assert argv[-1] == "-snapshot"


def test_clock_offset_sets_the_rtc_start() -> None:
    assert rtc_base(NOW, 0) == "utc"
    behind = dt.datetime.fromisoformat(rtc_base(NOW, -3600)).replace(tzinfo=dt.UTC)
    assert behind.timestamp() == NOW - 3600
    assert rtc_base(NOW, 90) == "2027-01-15T08:01:30"


def test_commas_in_paths_are_escaped(tmp_path: Path) -> None:
    work = tmp_path / "a,b"
    config = MachineConfig(name="vm1", boot=boot(tmp_path))
    argv = build_command(config, MachinePaths(work), now=NOW)
    assert qemu_escape("a,b") == "a,,b"
    chardevs = [parse_qemu_opts(v) for v in values(argv, "-chardev")]
    assert {str(c.get("path")) for c in chardevs} >= {
        str(work / "agent.sock"),
        str(work / "qmp.sock"),
    }


def test_socket_paths_must_fit_sun_path(tmp_path: Path) -> None:
    config = MachineConfig(name="vm1", boot=boot(tmp_path))
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        build_command(config, MachinePaths(Path("/tmp") / ("x" * 100)), now=NOW)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "a,b", "invalid machine name"),
        ("name", "", "invalid machine name"),
        ("accel", "hvf", "unknown accelerator"),
        ("memory_mib", 16, "too small"),
        ("cpus", 0, "at least 1"),
        ("vsock_cid", 2, "reserved"),
    ],
)
def test_invalid_configurations_are_refused(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    fields: dict[str, object] = {"name": "vm1", field: value}
    with pytest.raises(ConfigError, match=message):
        MachineConfig(boot=boot(tmp_path), **fields)  # type: ignore[arg-type]


def test_discovery_reads_back_what_the_builder_wrote(tmp_path: Path) -> None:
    argv = command(tmp_path, vsock_cid=7)
    found = discover_from_cmdline(argv)
    assert found.name == "vm1"
    assert found.qmp == tmp_path / "work" / "qmp.sock"
    assert found.channel == tmp_path / "work" / "agent.sock"
    assert found.channel_chardev == "agent0"
    assert found.vsock_cid == 7
    assert found.notes == ()
