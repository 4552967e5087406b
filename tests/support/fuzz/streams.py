"""Byte streams for the protocol harnesses: frames with valid headers among garbage.

Raw bytes alone rarely get past the header's CRC-32, so the fuzzer's bytes
are read as a recipe: a run of pieces, each a frame whose header fields,
length and payload come from the input (its checksum computed, or left
wrong), a run of zero padding, or raw bytes. The stream is then cut at
points the input chooses, as a socket delivers it.
"""

from __future__ import annotations

import itertools
import zlib

import atheris

from vmis.protocol.frames import HEADER_SIZE, MAGIC, encode_header

__all__ = ["build_stream", "chunks", "header"]

_KINDS = [0, 1, 2, 3]


def header(kind: int, service: int, op: int, rid: int, length: int, *, version: int = 1,
           magic: bytes = MAGIC, good_crc: bool = True) -> bytes:
    """A 20-byte header with any field values, its checksum right unless told otherwise."""
    if magic == MAGIC and version == 1 and kind < 16 and good_crc:
        return encode_header(kind, service, op, rid, length)  # type: ignore[arg-type]
    head = (magic[:4].ljust(4, b"\0")
            + bytes([version & 0xFF, kind & 0xFF, service & 0xFF, op & 0xFF])
            + (rid & 0xFFFFFFFF).to_bytes(4, "little")
            + (length & 0xFFFFFFFF).to_bytes(4, "little"))
    crc = zlib.crc32(head) ^ (0 if good_crc else 1)
    return head + crc.to_bytes(4, "little")


def _frame(fdp: atheris.FuzzedDataProvider, large: bool) -> bytes:
    kind = fdp.PickValueInList(_KINDS) if fdp.ConsumeProbability() < 0.95 else \
        fdp.ConsumeIntInRange(0, 255)
    service = fdp.ConsumeIntInRange(0, 9) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 255)
    op = fdp.ConsumeIntInRange(0, 16) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 255)
    rid = 0 if kind == 3 and fdp.ConsumeProbability() < 0.9 else fdp.ConsumeIntInRange(0, 7)
    if fdp.ConsumeProbability() < 0.05:
        rid = fdp.ConsumeIntInRange(0, 0xFFFFFFFF)
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    if large:
        # a payload past the decoder's large-frame threshold (64 KiB), cheap to build
        payload += bytes(64 * 1024 + fdp.ConsumeIntInRange(0, 64))
    length = len(payload)
    roll = fdp.ConsumeProbability()
    if roll < 0.05:  # a length that lies: too long (truncated frame) or above the limit
        length = fdp.ConsumeIntInRange(0, 0xFFFFFFFF)
    bad_crc = fdp.ConsumeProbability() < 0.03
    version = 1 if fdp.ConsumeProbability() < 0.97 else fdp.ConsumeIntInRange(0, 255)
    return header(kind, service, op, rid, length, version=version, good_crc=not bad_crc) + payload


def build_stream(fdp: atheris.FuzzedDataProvider, max_pieces: int = 12,
                 prefix: bytes = b"") -> bytes:
    """A stream of frames, padding and garbage, as the fuzzer's bytes describe it."""
    parts = [prefix]
    for _ in range(fdp.ConsumeIntInRange(0, max_pieces)):
        what = fdp.ConsumeIntInRange(0, 15)
        if what < 11:
            parts.append(_frame(fdp, large=False))
        elif what == 11:
            parts.append(_frame(fdp, large=True))
        elif what == 12:
            parts.append(bytes(fdp.ConsumeIntInRange(1, 300)))
        elif what == 13:
            # a frame cut short: its header and part of its payload
            whole = _frame(fdp, large=False)
            parts.append(whole[: fdp.ConsumeIntInRange(0, len(whole))])
        else:
            parts.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
    return b"".join(parts)


def chunks(fdp: atheris.FuzzedDataProvider, data: bytes) -> list[bytes]:
    """*data* cut at up to 16 points the fuzzer picks (each chunk non-empty)."""
    if not data:
        return []
    count = fdp.ConsumeIntInRange(0, 16)
    cuts = sorted({fdp.ConsumeIntInRange(1, len(data)) for _ in range(count)})
    edges = [0, *[c for c in cuts if c < len(data)], len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


assert len(header(0, 0, 0, 1, 0)) == HEADER_SIZE
