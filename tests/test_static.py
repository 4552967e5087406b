"""Static checks run as tests: layering, the guest's stdlib-only rule, mypy and ruff."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from vmis.packaging.bundle import GUEST_SIDE, is_guest_side

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "vmis"

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def layer_map() -> dict[str, set[str]]:
    """layer -> the vmis packages it may import, read from docs/architecture.md §1."""
    text = ARCHITECTURE.read_text()
    table = text.split("<!-- the layer map: tests/test_static.py parses this table -->", 1)[1]
    allowed: dict[str, set[str]] = {}
    for line in table.strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        layer, imports = (cell.strip() for cell in line.strip("|").split("|")[:2])
        allowed[layer.strip("`")] = {word.strip("`, ") for word in imports.split()} - {"—"}
    return allowed


#: layer -> vmis packages it may import (besides itself and vmis.errors / vmis top level)
ALLOWED = layer_map()


def test_every_package_is_a_layer_of_the_map():
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), "docs/architecture.md §1 and src/vmis/ disagree"
    for layer, names in ALLOWED.items():
        assert names <= set(ALLOWED), f"{layer} may import unknown layers {names - set(ALLOWED)}"


#: the sans-IO core may not do I/O
NO_IO_IN_PROTOCOL = {"asyncio", "socket", "os", "selectors", "subprocess", "threading"}

STDLIB = set(sys.stdlib_module_names)


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def files(spec: str) -> list[Path]:
    target = PKG / spec
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downward(layer):
    bad = []
    for path in files(layer):
        for name in imports(path):
            parts = name.split(".")
            if parts[0] != "vmis" or len(parts) < 2 or parts[1] in ("errors", "psargs", layer):
                continue
            if parts[1] in ALLOWED and parts[1] not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


def test_guest_side_uses_the_standard_library_only():
    bad = []
    for spec in GUEST_SIDE:
        for path in files(spec):
            if not is_guest_side(path.relative_to(PKG).as_posix()):
                continue
            for name in imports(path):
                top = name.split(".")[0]
                if top != "vmis" and top not in STDLIB:
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
                if top == "vmis" and not _ships(name):
                    bad.append(f"{path.relative_to(SRC)} imports host-side {name}")
    assert not bad, "\n".join(bad)


def _ships(module: str) -> bool:
    """Whether the module named (or, for a name inside a module, its module) ships to guests."""
    parts = module.split(".")[1:]
    while parts:
        base = PKG.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return is_guest_side(candidate.relative_to(PKG).as_posix())
        parts.pop()
    return is_guest_side("__init__.py")


def test_protocol_does_no_io():
    bad = [f"{p.relative_to(SRC)} imports {n}" for p in files("protocol") for n in imports(p)
           if n.split(".")[0] in NO_IO_IN_PROTOCOL]
    assert not bad, "\n".join(bad)


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=SRC.parent, timeout=600)


def test_mypy_strict_clean():
    result = run_tool("mypy", "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_clean():
    result = run_tool("ruff", "check", "src")
    assert result.returncode == 0, result.stdout + result.stderr
