"""JSON payloads for the service harnesses: the members a payload has, with any values.

Mutating JSON text byte by byte seldom produces an object with the right
member names, so the fuzzer's bytes pick members from the names the
payloads of vmis use (:data:`KEYS`) and give each a value of any JSON type:
huge and negative integers, NaN and infinities (``json.loads`` accepts
them), lone surrogates, nested containers. Sometimes the payload is raw
bytes instead, or JSON text nested deeper than a parser's stack.
"""

from __future__ import annotations

import json
from typing import Any

import atheris

__all__ = ["KEYS", "json_object", "json_payload", "json_value", "text"]

#: member names of the json payloads of docs/protocol.md and docs/services/*.md
KEYS = [
    "action", "agent", "argv", "atime_ns", "bytes", "code", "create_path", "cwd", "cycle",
    "daemon", "delta_ns", "deleted", "duration_ms", "enabled", "entries", "env", "eof",
    "error", "event", "exact", "failed", "flag", "force", "framework", "handle", "health",
    "host", "id", "inline_max", "items", "keep", "key", "last", "last_step_delta_ns",
    "last_step_ns", "length", "max_payload", "message", "mode", "mtime_ns", "name", "next",
    "note", "offers", "offset", "offset_ns", "parents", "part", "path", "pending", "pool",
    "prev", "reason", "requested_by", "resume", "rtt_ns", "sample_ns", "samples", "seq",
    "service", "services", "session", "sessions", "settings", "sha256", "signal", "size",
    "start", "startup", "state", "stdin", "stream", "t1", "t2", "t3", "t4", "timeout",
    "timeout_ms", "token", "type", "value", "version", "vm_id", "vm_name", "window",
    "interval_ms", "cancel", "mode", "applied", "result",
]

_WORDS = ["", "/", "/tmp", "/tmp/a", "/srv/x/y", "..", "/tmp/../etc", "a\0b", "ok", "critical",
          "running", "stopped", "automatic", "disabled", "manual", "External", "Guest",
          "Auto", "AutoExternal", "3", "poweroff", "reboot", "sync", "sample", "step",
          "slew", "none", "own", "chrony", "ntp", "resume", "jump", "TERM", "KILL",
          "heartbeat", "kvp", "vss", "fcopy", "timesync", "shutdown", "vmsession",
          "\ud800", "é" * 300, "x" * 2048, "LD_PRELOAD", "PATH"]

_INTS = [0, 1, -1, 2, 3, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
         2**53, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30, -(10**30), 10**400, -(10**400)]
_FLOATS = [0.5, -0.0, 1e300, -1e300, float("inf"), float("-inf"), float("nan"), 1.5e-300,
           2.0]


def text(fdp: atheris.FuzzedDataProvider) -> str:
    """A string: a word vmis knows, or any text (lone surrogates included)."""
    if fdp.ConsumeBool():
        return str(fdp.PickValueInList(_WORDS))
    return str(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40)))


def json_value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """Any JSON value, as ``json.loads`` may return it; numbers at their edges often."""
    kind = fdp.ConsumeIntInRange(0, 11 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind in (2, 3):
        return fdp.PickValueInList(_INTS)
    if kind == 4:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 9))
    if kind == 5:
        return fdp.PickValueInList(_FLOATS)
    if kind in (6, 7, 8):
        return text(fdp)
    if kind in (9, 10):
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return json_object(fdp, depth + 1)


#: the values some members take in vmis payloads, so that a combination of them
#: (``"action": "slew"`` with an ``offset_ns`` at its edge) is not left to chance
TYPICAL: dict[str, list[Any]] = {
    "action": ["step", "slew", "none", "defer", "chrony", "poweroff", "reboot"],
    "state": ["running", "stopped", "frozen", "thawed", "freezing", "timed-out",
              "Synchronized", "Stepped", "Slewing", "Chrony"],
    "startup": ["automatic", "manual", "disabled"],
    "mode": ["own", "chrony", "ntp", 0o644, 0o755],
    "flag": ["sync", "sample"],
    "event": ["resume", "jump"],
    "health": ["ok", "critical"],
    "stream": [1, 2],
    "pool": [0, 1, 2, 3, 4, "External", "Guest"],
    "service": ["heartbeat", "kvp", "shutdown", "timesync", "vss", "fcopy", "vmsession"],
    "signal": ["TERM", "KILL", "INT", 9, 15],
    "result": ["thawed", "timed-out", "not-frozen"],
    "pending": [True, False],
    "path": ["/tmp", "/tmp/f", "/srv/a/b", "/", "/etc/passwd", "tmp"],
    "name": ["f", "a.txt", ".", "..", "x/y"],
    "items": [[["k", "v"]], [["k", "v"], ["k2", "v2"]], []],
    "sessions": [[1], [1, 2], []],
    "session": [1, 2, 3],
    "handle": [1, 2, 0],
}


def _member(fdp: atheris.FuzzedDataProvider, key: str, depth: int) -> Any:
    roll = fdp.ConsumeProbability()
    if key in TYPICAL and roll < 0.5:
        return fdp.PickValueInList(TYPICAL[key])
    if roll < 0.85:
        return json_value(fdp, depth)
    return fdp.ConsumeIntInRange(-2**40, 2**40)


def json_object(fdp: atheris.FuzzedDataProvider, depth: int = 0,
                keys: list[str] | None = None) -> dict[str, Any]:
    """An object whose members mostly carry names of vmis payloads.

    With *keys* (the members of one payload), half the objects have most of
    those members (a combination of their values is what a bug needs), the
    other half a few members of any name.
    """
    body: dict[str, Any] = {}
    if keys and fdp.ConsumeBool():
        for key in keys:
            if fdp.ConsumeProbability() < 0.8:  # (an exhausted input reads 0: all members)
                body[key] = _member(fdp, key, depth)
        return body
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        roll = fdp.ConsumeProbability()
        if keys and roll < 0.7:
            key = str(fdp.PickValueInList(keys))
        elif roll < 0.95:
            key = str(fdp.PickValueInList(KEYS))
        else:
            key = text(fdp)
        body[key] = _member(fdp, key, depth)
    return body


def json_payload(fdp: atheris.FuzzedDataProvider, keys: list[str] | None = None) -> bytes:
    """A json payload (docs/protocol.md §2.2) as a peer may send it, well-formed or not."""
    roll = fdp.ConsumeIntInRange(0, 19)
    if roll == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    if roll == 1:
        depth = fdp.ConsumeIntInRange(1, 100_000)
        return b"[" * depth + b"]" * depth
    if roll == 2:
        return b'{"seq": ' + b"9" * fdp.ConsumeIntInRange(1, 6000) + b"}"
    if roll == 3:
        return json.dumps(json_value(fdp)).encode()
    return json.dumps(json_object(fdp, keys=keys)).encode()


def json_raw_payload(fdp: atheris.FuzzedDataProvider, keys: list[str] | None = None) -> bytes:
    """A json+raw payload (docs/protocol.md §2.2), its length prefix right or not."""
    head = json_payload(fdp, keys)
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    size = len(head) if fdp.ConsumeProbability() < 0.9 else fdp.ConsumeIntInRange(0, 2**32 - 1)
    return size.to_bytes(4, "little") + head + raw
