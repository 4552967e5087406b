"""A harness with a planted crash, so tests/fuzz can show a crash fails a run.

An input that starts with ``crash`` raises KeyError, which no function of
vmis documents; anything else passes.
"""

from __future__ import annotations


def one_input(data: bytes) -> None:
    if data.startswith(b"crash"):
        raise KeyError("planted")
