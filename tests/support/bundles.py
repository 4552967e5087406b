"""Agent bundles of other releases, built in the test from this source tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import vmis
from vmis.packaging.bundle import build_bundle


def make_bundle(workdir: Path, version: str,
                patches: dict[str, tuple[str, str]] | None = None,
                removed: tuple[str, ...] = ()) -> Path:
    """Copy the vmis package, set its version, apply text patches, build a bundle.

    :param patches: package-relative path -> (old text, new text); each must apply.
    :param removed: package-relative files this release does not have.
    """
    package = workdir / f"src-{version}" / "vmis"
    shutil.copytree(Path(vmis.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = package / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{vmis.__version__}"',
                                             f'__version__ = "{version}"'))
    for rel, (old, new) in (patches or {}).items():
        path = package / rel
        text = path.read_text()
        assert old in text, f"patch does not apply to {rel}"
        path.write_text(text.replace(old, new))
    for rel in removed:
        (package / rel).unlink()
    out = workdir / f"vmis-guest-{version}.pyz"
    build_bundle(out, package)
    return out
