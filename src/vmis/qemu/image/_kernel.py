"""Take apart a Debian kernel package: an uncompressed vmlinux and the modules the guest needs.

Two facts shape this module (docs/real-vms.md, "The test machines"):

- QEMU boots an uncompressed ELF ``vmlinux`` through its PVH entry point
  without running a BIOS or the xz decompressor under TCG, which saves about
  2.5 s a boot. Debian ships only the compressed bzImage, so the payload is
  cut out of it here; the ELF note ``XEN_ELFNOTE_PHYS32_ENTRY`` tells whether
  the kernel has the PVH entry point at all.
- The drivers the guest needs are modules (``=m`` in Debian's config). Their
  load order is computed from each module's own ``.modinfo`` section
  (``depends=``), so no ``depmod`` over the whole 400 MB tree is needed.

Everything here parses bytes with the standard library and is unit-tested.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "builtin_modules",
    "has_pvh_entry",
    "ko_depends",
    "modinfo",
    "module_closure",
    "module_index",
    "vmlinux_from_bzimage",
]

_ELF_MAGIC = b"\x7fELF"
_PT_NOTE = 4
#: Xen's ELF note type for the 32-bit PVH entry point (xen/include/public/elfnote.h).
_XEN_ELFNOTE_PHYS32_ENTRY = 18

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"


# Section: the kernel image


def vmlinux_from_bzimage(bzimage: bytes) -> bytes | None:
    """Cut the uncompressed ELF kernel out of a bzImage.

    Looks for an xz or gzip stream (the compressions the standard library
    reads) whose output is an ELF file, as the kernel's own
    ``scripts/extract-vmlinux`` does.

    :param bzimage: the contents of ``/boot/vmlinuz-*``.
    :return: the ELF image, or ``None`` if no supported payload was found.
    """
    for magic, decompress in ((_XZ_MAGIC, _unxz), (_GZIP_MAGIC, _gunzip)):
        start = bzimage.find(magic)
        while start != -1:
            elf = decompress(bzimage[start:])
            if elf is not None and elf.startswith(_ELF_MAGIC):
                return elf
            start = bzimage.find(magic, start + 1)
    return None


def _unxz(data: bytes) -> bytes | None:
    try:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    except lzma.LZMAError:
        return None


def _gunzip(data: bytes) -> bytes | None:
    try:
        # The stream is followed by other data; a decompressobj stops at its end.
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    except (zlib.error, gzip.BadGzipFile):
        return None


def _elf64_notes(elf: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """Yield (name, type, descriptor) of every note in the PT_NOTE segments of an ELF64 file."""
    if not elf.startswith(_ELF_MAGIC) or len(elf) < 64 or elf[4] != 2 or elf[5] != 1:
        return  # not a little-endian ELF64 file
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        base = phoff + index * phentsize
        if base + 56 > len(elf):
            return
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, base
        )
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, min(p_offset + p_filesz, len(elf))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            yield (
                elf[name_at : name_at + namesz].rstrip(b"\0"),
                ntype,
                elf[desc_at : desc_at + descsz],
            )
            pos = desc_at + ((descsz + 3) & ~3)


def has_pvh_entry(elf: bytes) -> bool:
    """Whether an ELF kernel declares the PVH entry point QEMU's ``-kernel`` needs for ELF boot."""
    return any(
        name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY
        for name, ntype, _ in _elf64_notes(elf)
    )


# Section: modules


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """Read the ``.modinfo`` section of a kernel module (``key=value`` strings).

    :param ko: the contents of an uncompressed ``.ko`` file.
    :return: each key with its values in order (``alias`` occurs many times).
    :raise ValueError: When the file is not an ELF64 module with a ``.modinfo`` section.
    """
    if not ko.startswith(_ELF_MAGIC) or len(ko) < 64 or ko[4] != 2:
        raise ValueError("not an ELF64 file")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, base)
        return name, offset, size

    _, strtab_off, strtab_size = section(shstrndx)
    strtab = ko[strtab_off : strtab_off + strtab_size]
    for index in range(shnum):
        name_at, offset, size = section(index)
        if strtab[name_at : strtab.index(b"\0", name_at)] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in ko[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    raise ValueError("no .modinfo section")


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Map module names (``-`` written as ``_``, as the kernel does) to their ``.ko`` files.

    :param modules_dir: ``lib/modules/<release>`` of an extracted kernel package.
    """
    return {ko.stem.replace("-", "_"): ko for ko in sorted(modules_dir.rglob("*.ko"))}


def module_closure(
    wanted: Iterable[str],
    index: dict[str, Path],
    depends: Callable[[Path], list[str]],
    builtin: frozenset[str] = frozenset(),
) -> list[str]:
    """The modules to load, dependencies first, for the wanted ones.

    :param wanted: module names, in the order to load them when unrelated.
    :param index: :func:`module_index` of the kernel.
    :param depends: returns the direct dependencies of a module file.
    :param builtin: names built into the kernel (:func:`builtin_modules`); skipped.
    :return: names in a valid ``insmod`` order, each once.
    :raise KeyError: When a wanted module or a dependency is not in the index
        (a built-in module is never listed as a dependency, so this means the
        package does not match the recipe).
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in order or name in builtin:
            return
        if name in visiting:
            raise ValueError(f"module dependency cycle through {name}")
        if name not in index:
            raise KeyError(name)
        visiting.add(name)
        for dep in depends(index[name]):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def builtin_modules(modules_dir: Path) -> frozenset[str]:
    """Names of the modules built into the kernel, from ``modules.builtin``."""
    listing = (modules_dir / "modules.builtin").read_text()
    return frozenset(Path(line).stem.replace("-", "_") for line in listing.split())


def ko_depends(ko_path: Path) -> list[str]:
    """Direct dependencies of a module file, from its ``depends=`` entry."""
    values = modinfo(ko_path.read_bytes()).get("depends", [""])
    return [dep for value in values for dep in value.split(",") if dep]
