"""The guest's uptime its agent reports in the handshake: since its init (PID 1) started."""

from __future__ import annotations

import os
from pathlib import Path

from vmis.guest.agent import system_uptime


def _proc(tmp_path: Path, uptime: str, stat: str) -> Path:
    (tmp_path / "1").mkdir()
    (tmp_path / "uptime").write_text(uptime)
    (tmp_path / "1/stat").write_text(stat)
    return tmp_path


def test_uptime_counts_from_init_not_from_the_kernel(tmp_path):
    ticks = os.sysconf("SC_CLK_TCK")
    # a name with spaces and a parenthesis: the fields are counted after its last ')'
    fields = ["S"] + ["0"] * 18 + [str(1000 * ticks)] + ["0"] * 30
    proc = _proc(tmp_path, "1234.50 999.00\n", f"1 (my (init) x) {' '.join(fields)}\n")
    assert system_uptime(proc) == 234.5


def test_unreadable_proc_is_unknown(tmp_path):
    assert system_uptime(tmp_path) is None
    assert system_uptime(_proc(tmp_path, "garbage", "1 (init) S")) is None


def test_this_machine_has_an_uptime():
    seconds = system_uptime()
    assert seconds is not None and seconds > 0
