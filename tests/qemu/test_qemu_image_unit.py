"""The pieces of the guest image build that run without debootstrap or QEMU."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vmis.errors import ImageBuildError
from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.image.layers import ensure_agent_image, find_base_image
from vmis.qemu.image.pruning import prune_images
from vmis.qemu.image._cache import build_lock, cache_dir, remove_tree, tree_digest
from vmis.qemu.image._cpio import CpioEntry, newc_archive
from vmis.qemu.image._debian import debian_mirror, parse_kernel_meta, parse_sources
from vmis.qemu.image._kernel import (
    has_pvh_entry,
    modinfo,
    module_closure,
    vmlinux_from_bzimage,
)
from vmis.qemu.image._recipe import INIT_SCRIPT, recipe_digest
from vmis.qemu.image._steps import BuildLog, require_tools

# Section: synthetic ELF files


def elf_with_notes(notes: list[tuple[bytes, int, bytes]]) -> bytes:
    """A minimal little-endian ELF64 file with one PT_NOTE segment."""
    blob = b""
    for name, ntype, desc in notes:
        name_z = name + b"\0"
        blob += struct.pack("<III", len(name_z), len(desc), ntype)
        blob += name_z + b"\0" * (-len(name_z) % 4) + desc + b"\0" * (-len(desc) % 4)
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(blob), len(blob), 4)
    return header + phdr + blob


def elf_with_modinfo(entries: list[str]) -> bytes:
    """A minimal ELF64 relocatable file with .shstrtab and .modinfo sections."""
    shstrtab = b"\0.shstrtab\0.modinfo\0"
    info = b"".join(e.encode() + b"\0" for e in entries)
    body_at = 64
    shstr_at, info_at = body_at, body_at + len(shstrtab)
    shoff = info_at + len(info)
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)

    def section(name: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 3 if name else 0, 0, 0, offset, size, 0, 0, 1, 0)

    sections = (
        section(0, 0, 0) + section(1, shstr_at, len(shstrtab)) + section(11, info_at, len(info))
    )
    return header + shstrtab + info + sections


# Section: kernel


def test_pvh_note_is_found_among_other_notes() -> None:
    pvh = elf_with_notes([(b"GNU", 3, b"abcd"), (b"Xen", 18, struct.pack("<Q", 0x1000000))])
    assert has_pvh_entry(pvh)
    assert not has_pvh_entry(elf_with_notes([(b"Xen", 17, b"1234"), (b"GNU", 18, b"")]))
    assert not has_pvh_entry(b"not an elf file at all" * 4)


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress])
def test_vmlinux_is_cut_out_of_a_bzimage(compress: object) -> None:
    elf = elf_with_notes([(b"Xen", 18, b"\0" * 8)]) + os.urandom(5000)
    payload = compress(elf)  # type: ignore[operator]
    bzimage = b"MZ" + os.urandom(300) + payload + b"trailing setup data"
    assert vmlinux_from_bzimage(bzimage) == elf


def test_vmlinux_extraction_gives_up_on_unknown_payloads() -> None:
    assert vmlinux_from_bzimage(b"MZ" + b"\0" * 1000) is None
    # A valid xz stream that is not an ELF file is not a kernel.
    assert vmlinux_from_bzimage(b"MZ" + lzma.compress(b"hello")) is None


def test_modinfo_reads_the_section() -> None:
    ko = elf_with_modinfo(
        ["license=GPL", "depends=jbd2,mbcache,crc16", "alias=fs-ext4", "alias=ext3"]
    )
    info = modinfo(ko)
    assert info["depends"] == ["jbd2,mbcache,crc16"]
    assert info["alias"] == ["fs-ext4", "ext3"]
    with pytest.raises(ValueError, match="not an ELF64"):
        modinfo(b"garbage")


def test_module_closure_orders_dependencies_first() -> None:
    deps = {
        "ext4": ["jbd2", "mbcache", "crc16"],
        "jbd2": [],
        "mbcache": [],
        "crc16": [],
        "virtio_blk": ["virtio", "virtio_ring"],
        "virtio": [],
        "virtio_ring": [],
        "virtio_pci": ["virtio", "virtio_ring"],
    }
    index = {name: Path(f"/{name}.ko") for name in deps}
    order = module_closure(
        ["virtio_pci", "virtio-blk", "ext4", "sch_fq_codel"],
        index,
        lambda ko: deps[ko.stem],
        builtin=frozenset({"sch_fq_codel"}),
    )
    assert order == [
        "virtio",
        "virtio_ring",
        "virtio_pci",
        "virtio_blk",
        "jbd2",
        "mbcache",
        "crc16",
        "ext4",
    ]
    with pytest.raises(KeyError):
        module_closure(["nope"], index, lambda ko: [])
    with pytest.raises(ValueError, match="cycle"):
        module_closure(
            ["a"],
            {"a": Path("/a.ko"), "b": Path("/b.ko")},
            lambda ko: ["b" if ko.stem == "a" else "a"],
        )


# Section: initramfs


def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, rdev) of every member, the trailer excluded."""
    out: list[tuple[str, int, bytes, tuple[int, int]]] = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_at = pos + 110
        name = data[name_at : name_at + namesize - 1].decode()
        body = name_at + namesize + (-(110 + namesize) % 4)
        content = data[body : body + filesize]
        pos = body + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return out
        out.append((name, fields[1], content, (fields[9], fields[10])))


def test_newc_archive_round_trips() -> None:
    entries = [
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/busybox", b"\x7fELF" + b"x" * 13, 0o755),
        CpioEntry.symlink("bin/sh", "busybox"),
        CpioEntry.chardev("dev/console", 5, 1),
        CpioEntry.file("init", INIT_SCRIPT.encode(), 0o755),
    ]
    archive = newc_archive(entries)
    assert len(archive) % 4 == 0
    assert archive == newc_archive(entries)  # reproducible
    members = parse_newc(archive)
    assert [m[0] for m in members] == ["bin", "bin/busybox", "bin/sh", "dev/console", "init"]
    assert stat.S_ISDIR(members[0][1])
    assert members[1][2] == b"\x7fELF" + b"x" * 13 and members[1][1] & 0o777 == 0o755
    assert stat.S_ISLNK(members[2][1]) and members[2][2] == b"busybox"
    assert stat.S_ISCHR(members[3][1]) and members[3][3] == (5, 1)
    assert members[4][2].startswith(b"#!/bin/sh")


def test_init_script_is_valid_shell(tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_text(INIT_SCRIPT)
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_recipe_digest_is_stable() -> None:
    assert recipe_digest() == recipe_digest()
    assert len(recipe_digest()) == 64


# Section: Debian inputs

DEB822 = """\
Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
# a comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main contrib
"""


def test_parse_sources_both_styles() -> None:
    entries = parse_sources(DEB822, deb822=True)
    assert [e.uri for e in entries] == [
        "http://security.example/debian-security",
        "http://mirror.example/debian/",
    ]
    assert entries[1].suites == ("bookworm", "bookworm-updates")
    one_line = parse_sources(
        "# deb http://commented.example/ bookworm main\n"
        "deb-src http://src.example/ bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://opts.example/debian bookworm main\n",
        deb822=False,
    )
    assert [(e.uri, e.suites, e.components) for e in one_line] == [
        ("http://opts.example/debian", ("bookworm",), ("main",))
    ]


def test_debian_mirror_follows_apt_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VMIS_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    assert debian_mirror("bookworm", tmp_path) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    monkeypatch.setenv("VMIS_DEBIAN_MIRROR", "http://override.example/debian")
    assert debian_mirror("bookworm", tmp_path) == "http://override.example/debian"


def test_parse_kernel_meta() -> None:
    show = (
        "Package: linux-image-amd64\nVersion: 6.1.192-2\n"
        "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: Linux\n"
    )
    kernel = parse_kernel_meta(show)
    assert (kernel.name, kernel.version, kernel.release) == (
        "linux-image-6.1.0-56-amd64", "6.1.192-2", "6.1.0-56-amd64",
    )  # fmt: skip
    with pytest.raises(ValueError, match="no versioned"):
        parse_kernel_meta("Package: linux-image-amd64\n")


# Section: cache mechanics


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMIS_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("VMIS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vmis"


def test_tree_digest_sees_content_mode_and_links_but_not_times(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("v1")
    os.symlink("tool", root / "usr/bin/alias")
    (root / "__pycache__").mkdir()
    (root / "__pycache__/x.pyc").write_bytes(os.urandom(16))
    first = tree_digest(root)
    os.utime(root / "usr/bin/tool", (1, 1))
    (root / "__pycache__/x.pyc").write_bytes(os.urandom(16))
    assert tree_digest(root) == first
    (root / "usr/bin/tool").chmod(0o755)
    assert tree_digest(root) != first
    second = tree_digest(root)
    (root / "usr/bin/alias").unlink()
    os.symlink("other", root / "usr/bin/alias")
    assert tree_digest(root) != second


def test_build_lock_excludes_a_second_builder(tmp_path: Path) -> None:
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with build_lock(tmp_path, "base-x"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(5)
        begin = time.monotonic()
        with (
            pytest.raises(ImageBuildError, match="another process has been building base-x"),
            build_lock(tmp_path, "base-x", timeout=0.6),
        ):
            pass
        assert time.monotonic() - begin >= 0.5
        with build_lock(tmp_path, "base-y", timeout=0.1):
            pass  # other names are independent
    finally:
        release.set()
        thread.join()
    with build_lock(tmp_path, "base-x", timeout=0.1):
        pass  # released by the holder


def test_build_log_names_step_and_log(tmp_path: Path) -> None:
    with BuildLog(tmp_path / "b.log") as log:
        log.run("hello", ["sh", "-c", "echo greetings"], timeout=10)
        with pytest.raises(ImageBuildError) as failed:
            log.run("debootstrap", ["sh", "-c", "echo broken >&2; exit 3"], timeout=10)
        with pytest.raises(ImageBuildError, match="did not finish within"):
            log.run("slow", ["sleep", "5"], timeout=0.2)
        with pytest.raises(ImageBuildError, match="program not found"):
            log.run("missing", ["/nonexistent/tool"], timeout=1)
    message = str(failed.value)
    assert (
        "step 'debootstrap'" in message
        and "status 3" in message
        and str(tmp_path / "b.log") in message
    )
    text = (tmp_path / "b.log").read_text()
    assert "greetings" in text and "broken" in text
    assert set(log.timings) == {"hello", "debootstrap", "slow", "missing"}


def test_require_tools_names_the_packages() -> None:
    require_tools({"sh": "dash"})
    with pytest.raises(
        ImageBuildError, match="apt-get install -y --no-install-recommends pkg-a pkg-b"
    ):
        require_tools({"no-such-tool-1": "pkg-b", "no-such-tool-2": "pkg-a", "sh": "dash"})


def test_remove_tree(tmp_path: Path) -> None:
    tree = tmp_path / "x"
    (tree / "a/b").mkdir(parents=True)
    (tree / "a/b/f").write_text("x")
    remove_tree(tree)
    assert not tree.exists()
    remove_tree(tree)  # absent: nothing to do


# Section: agent layer (real cp and mkfs.ext4; a fake base)

needs_mkfs = pytest.mark.skipif(
    shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")) is None
    or shutil.which("debugfs", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")) is None,
    reason="e2fsprogs (mkfs.ext4, debugfs) is not installed",
)


def fake_base(cache: Path) -> GuestImage:
    directory = cache / "images" / "base-0123456789abcdef"
    (directory / "rootfs/etc").mkdir(parents=True)
    (directory / "rootfs/etc/os-release").write_text("ID=debian\n")
    manifest = {
        "kind": "base", "key": "0123456789abcdef", "boot": "bios", "append": "console=ttyS0",
        "kernel_release": "6.1.0-test", "built_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return GuestImage.load(directory)


def read_from_ext4(image: Path, path: str) -> str:
    debugfs = shutil.which("debugfs", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    assert debugfs is not None
    proc = subprocess.run(
        [debugfs, "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True
    )
    return proc.stdout


@needs_mkfs
def test_agent_layer_is_built_once_per_installed_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = fake_base(cache)
    assert base.kernel == base.directory / "vmlinuz" and base.firmware is None
    assert find_base_image(cache) == base
    calls: list[Path] = []

    def installer(root: Path) -> None:
        calls.append(root)
        (root / "usr/lib/vmis").mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/vmis/agent.py").write_text("print('v1')\n")

    first = ensure_agent_image(installer, base=base, cache=cache)
    assert first.kind == "agent" and first.base_key == base.key
    assert first.kernel == base.kernel and first.initrd == base.initrd
    assert read_from_ext4(first.rootfs, "/usr/lib/vmis/agent.py") == "print('v1')\n"
    assert read_from_ext4(first.rootfs, "/etc/os-release") == "ID=debian\n"
    assert not (first.directory / "rootfs").exists()  # the tree copy is not kept
    assert len(calls) == 2  # once to key the layer, once into the copy of the base

    again = ensure_agent_image(installer, base=base, cache=cache)
    assert again == first and len(calls) == 3  # keyed again, not rebuilt

    def installer_v2(root: Path) -> None:
        (root / "usr/lib/vmis").mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/vmis/agent.py").write_text("print('v2')\n")

    second = ensure_agent_image(installer_v2, base=base, cache=cache)
    assert second.key != first.key
    assert read_from_ext4(second.rootfs, "/usr/lib/vmis/agent.py") == "print('v2')\n"
    assert not list((cache / "images").glob(".tmp-*"))

    removed = prune_images(cache, keep_agent=1)
    assert removed == [first.directory]
    assert second.directory.exists() and base.directory.exists()


def test_failing_installer_is_a_build_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = fake_base(cache)

    def broken(root: Path) -> None:
        raise PermissionError("cannot write /usr/bin/vmis-guest")

    with pytest.raises(
        ImageBuildError, match="step 'install agent': PermissionError: cannot write"
    ):
        ensure_agent_image(broken, base=base, cache=cache)


def test_incomplete_image_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="not a complete image"):
        GuestImage.load(tmp_path)


@needs_mkfs
def test_agent_layers_of_a_vanished_base_are_pruned(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = fake_base(cache)

    def installer(root: Path) -> None:
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc/agent.conf").write_text("x=1\n")

    layer = ensure_agent_image(installer, base=base, cache=cache)
    assert prune_images(cache) == []
    shutil.rmtree(base.directory)
    with pytest.raises(ImageBuildError, match=r"base image of .* is gone"):
        GuestImage.load(layer.directory)
    assert prune_images(cache) == [layer.directory]
    assert not layer.directory.exists()
