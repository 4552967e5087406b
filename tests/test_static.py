"""Static checks run as tests: layering, the guest's stdlib-only rule, mypy and ruff."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "vmis"

#: layer -> vmis packages it may import (besides itself, the vmis top level and the leaf
#: modules every layer may use: vmis.errors, vmis.psargs)
ALLOWED = {
    "protocol": set(),
    "packaging": set(),
    "transport": {"protocol"},
    "services": {"protocol", "transport"},
    "guest": {"protocol", "transport", "services", "packaging"},
    "hyperv": {"protocol", "transport", "services", "guest"},
    "host": {"protocol", "transport", "services", "packaging"},
    "qemu": {"protocol", "transport", "services", "host", "packaging"},
    "api": {"protocol", "transport", "services", "host", "qemu", "packaging"},
    "lab": {"protocol", "transport", "services", "host", "qemu", "api", "guest", "cli",
            "packaging"},
    "cli": {"protocol", "transport", "services", "host", "qemu", "api", "guest", "hyperv", "lab",
            "packaging"},
}

#: the guest side: copied into guests that have nothing but Python
GUEST_SIDE = ["protocol", "transport", "services", "guest", "hyperv", "packaging",
              "cli/guest.py",
              "cli/guest_commands", "cli/table.py", "errors.py", "psargs.py", "__init__.py"]

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
            for name in imports(path):
                top = name.split(".")[0]
                if top != "vmis" and top not in STDLIB:
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
                if top == "vmis" and name.split(".")[1:2] and name.split(".")[1] in (
                        "host", "api", "lab", "qemu"):
                    bad.append(f"{path.relative_to(SRC)} imports host-side {name}")
    assert not bad, "\n".join(bad)


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
