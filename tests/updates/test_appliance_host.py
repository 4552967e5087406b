"""What libguestfs's appliance needs of the host: the kernel supermin would find
(vmis.qemu.appliance), against made-up /boot and /lib/modules trees."""

from __future__ import annotations

from pathlib import Path

from vmis.qemu.appliance import find_host_kernel, has_module


def kernel_tree(base: Path, release: str, *, image: bool = True,
                modules: tuple[str, ...] = ("kernel/fs/ext4/ext4.ko",)) -> None:
    (base / "boot").mkdir(parents=True, exist_ok=True)
    if image:
        (base / f"boot/vmlinuz-{release}").write_bytes(b"kernel")
    for module in modules:
        path = base / "modules" / release / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"module")


def test_no_kernel_in_a_minimal_tree(tmp_path):
    (tmp_path / "boot").mkdir()
    assert find_host_kernel(tmp_path / "boot", tmp_path / "modules") is None
    # the running kernel's modules without its image (a container given the host's
    # /lib/modules): supermin finds nothing to boot either
    kernel_tree(tmp_path, "6.18.0-host", image=False)
    assert find_host_kernel(tmp_path / "boot", tmp_path / "modules") is None


def test_the_newest_kernel_with_its_modules_is_found(tmp_path):
    kernel_tree(tmp_path, "6.1.0-9-amd64")
    kernel_tree(tmp_path, "6.1.0-57-amd64")
    (tmp_path / "boot/vmlinuz-6.2.0-1-amd64").write_bytes(b"no modules for this one")
    vmlinuz, modules = find_host_kernel(tmp_path / "boot", tmp_path / "modules")
    assert (vmlinuz.name, modules.name) == ("vmlinuz-6.1.0-57-amd64", "6.1.0-57-amd64")


def test_filesystem_modules_loadable_or_built_in(tmp_path):
    kernel_tree(tmp_path, "6.1.0-57-amd64", modules=("kernel/fs/ext4/ext4.ko.xz",))
    kernel_tree(tmp_path, "cloud", modules=("kernel/fs/xfs/xfs.ko",))
    (tmp_path / "modules/cloud/modules.builtin").write_text("kernel/fs/btrfs/btrfs.ko\n")
    assert has_module(tmp_path / "modules/6.1.0-57-amd64", "ext4")
    assert not has_module(tmp_path / "modules/cloud", "ext4")
    assert has_module(tmp_path / "modules/cloud", "btrfs")
    assert not has_module(tmp_path / "modules/cloud", "ext2")
