"""The guest agent as one file: a zipapp of the standard-library-only modules.

``vmis-guest.pyz`` runs with any Python >= 3.11 (``python3 vmis-guest.pyz
Get-Service``) and is what the installer, the setup disk and the online
update ship. It is built reproducibly: sorted entries and fixed timestamps,
so the same sources give the same bytes (and the same SHA-256).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import py_compile
import tempfile
import zipfile
from pathlib import Path

import vmis

__all__ = ["GUEST_SIDE", "HOST_ONLY", "build_bundle", "bundle_bytes", "bundle_version",
           "guest_files", "is_guest_side"]

#: the guest side of the package, relative to the vmis package directory
GUEST_SIDE = (
    "__init__.py", "errors.py", "psargs.py", "py.typed", "protocol", "transport", "services",
    "guest", "packaging",
    "hyperv", "cli/__init__.py", "cli/guest.py", "cli/guest_commands", "cli/table.py", "data",
)
#: what the host alone uses inside those folders (fnmatch patterns): the host
#: halves of the services, their contracts and what only they use, the advisor's data
HOST_ONLY = (
    "services/host_half.py", "services/link.py", "services/hypervisor.py",
    "services/*/host.py", "services/fcopy/engine.py", "services/fcopy/file_copier.py",
    "services/fcopy/tree_copier.py", "services/fcopy/legacy_trees.py",
    "services/fcopy/copies.py",
    "services/timesync/burst.py", "services/vss/checkpoint.py", "data/update_paths.toml",
)


def is_guest_side(relative: str) -> bool:
    """Whether a file (a path relative to the vmis package) ships to guests."""
    inside = any(relative == spec or relative.startswith(spec + "/") for spec in GUEST_SIDE)
    return inside and not any(fnmatch.fnmatchcase(relative, p) for p in HOST_ONLY)

_MAIN = b"""from vmis.cli.guest import console

console()
"""
#: zip entries carry this time so a rebuild gives the same bytes (1980-01-01)
_EPOCH = (1980, 1, 1, 0, 0, 0)


def guest_files(package: Path | None = None) -> list[tuple[str, Path]]:
    """``(archive name, source path)`` of every guest-side file, sorted."""
    base = package or Path(vmis.__file__).parent
    found: list[tuple[str, Path]] = []
    for spec in GUEST_SIDE:
        path = base / spec
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            relative = p.relative_to(base).as_posix()
            if "__pycache__" in p.parts or p.suffix in (".pyc", ".pyo"):
                continue
            if is_guest_side(relative):
                found.append((f"vmis/{relative}", p))
    return sorted(found)


def _compiled(name: str, source: bytes) -> bytes:
    # zipimport loads ``mod.pyc`` beside ``mod.py`` when its magic matches the
    # running Python, and otherwise compiles the source: compiling every
    # module at each agent start costs seconds in an emulated guest. An
    # unchecked-hash pyc carries no timestamp, so the bundle stays reproducible.
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m.py"
        src.write_bytes(source)
        out = Path(tmp) / "m.pyc"
        py_compile.compile(str(src), cfile=str(out), dfile=name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return out.read_bytes()


def bundle_bytes(package: Path | None = None) -> bytes:
    """The zipapp's bytes (deterministic for a given Python version).

    This process's own bundle is built once: the modules it runs cannot
    change while it runs, and every lab VM start, update and setup disk
    needs it.
    """
    if package is None:
        return _own_bundle()
    return _build(package)


@functools.cache
def _own_bundle() -> bytes:
    return _build(None)


def _build(package: Path | None) -> bytes:
    out = io.BytesIO()
    out.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        entries = [("__main__.py", _MAIN)]
        for name, path in guest_files(package):
            data = path.read_bytes()
            entries.append((name, data))
            if name.endswith(".py"):
                entries.append((name + "c", _compiled(name, data)))
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, _EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return out.getvalue()


def build_bundle(path: Path, package: Path | None = None) -> str:
    """Write the zipapp to *path* (mode 0755) and return its SHA-256."""
    data = bundle_bytes(package)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def bundle_version(data: bytes) -> str:
    """The ``__version__`` a bundle carries, read without running it.

    Every member's CRC is checked too: a probe run of the bundle imports
    only a few modules, so damage elsewhere would surface only at the
    agent's next start.

    :raise ValueError: When *data* is not a vmis agent bundle, or is damaged.
    """
    import lzma
    import re
    import zlib

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for member in zf.infolist():
                try:
                    zf.read(member)
                # a damaged bzip2 stream raises OSError, a damaged lzma one LZMAError
                except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError,
                        NotImplementedError, RuntimeError) as exc:
                    # a damaged header can also read as an unknown method,
                    # an encrypted member, or a member cut short
                    raise ValueError(
                        f"the bundle is damaged: {member.filename} fails its CRC check ({exc})"
                    ) from None
            init = zf.read("vmis/__init__.py").decode()
    except (KeyError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError,
            NotImplementedError, RuntimeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a vmis agent bundle ({exc})") from None
    match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", init, re.MULTILINE)
    if match is None:
        raise ValueError("the bundle carries no version")
    return match.group(1)
