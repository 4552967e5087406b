"""Helpers shared by the VSS tests: logging freeze hooks and a lab-like guest root."""

from __future__ import annotations

import json
from pathlib import Path

from vmis.guest.adapters import LAB_MOUNTS

#: a hook that appends "name phase reason|checkpoint|<the fake kernel's state>" to hooks.log
LOGGING_HOOK = """#!/bin/sh
state=$(cat "$VMIS_ROOT/run/vmis/freezer.json" 2>/dev/null || echo '{"frozen": []}')
log="$VMIS_ROOT/hooks.log"
echo "$(basename "$0") $1 ${VMIS_VSS_REASON:-}|$VMIS_CHECKPOINT_NAME|$state" >> "$log"
"""


def add_hook(root: Path, name: str, extra: str = "") -> None:
    """A logging hook in ``<root>/etc/vmis/freeze.d``; *extra* runs after the log line."""
    d = root / "etc/vmis/freeze.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(LOGGING_HOOK + extra + "\n")
    (d / name).chmod(0o755)


def hook_log(root: Path) -> list[tuple[str, list[str]]]:
    """(``name phase reason``, mount points frozen while it ran) per hook run, in order."""
    try:
        lines = (root / "hooks.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        head, _checkpoint, state = line.split("|", 2)
        out.append((" ".join(head.split()), json.loads(state)["frozen"]))
    return out


def make_root(tmp_path: Path) -> Path:
    """A guest root with a lab VM's mount table."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/mounts").write_text(LAB_MOUNTS)
    return root
