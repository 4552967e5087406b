"""The frame decoder (vmis.protocol.frames): any bytes, whole or split at any points.

May raise: RemoteProtocolError (a framing error, docs/protocol.md §2.4).
Checked: the stream gives the same frames and the same framing error
whether fed whole, fed in pieces, or received into ``get_buffer()`` in
pieces; a frame handed out is one a peer could have sent (its header
re-encodes to the same bytes). Hunting (§3.1) runs over the same bytes and
may only raise the same error class.
"""

from __future__ import annotations

import atheris

from support.fuzz.streams import build_stream, chunks
from vmis.errors import RemoteProtocolError
from vmis.protocol.frames import (
    DEFAULT_MAX_PAYLOAD,
    MIN_MAX_PAYLOAD,
    FrameDecoder,
    Kind,
    encode_header,
)

Outcome = tuple[list[tuple[int, int, int, int, bytes]], str]


def _drain(decoder: FrameDecoder, frames: list[tuple[int, int, int, int, bytes]]) -> None:
    while (frame := decoder.next_frame()) is not None:
        frames.append((int(frame.kind), frame.service, frame.op, frame.id, bytes(frame.body)))


def decode(pieces: list[bytes], limit: int, into_buffer: bool) -> Outcome:
    """Frames and the framing error (``""`` if none) of a stream delivered in *pieces*."""
    decoder = FrameDecoder(limit)
    frames: list[tuple[int, int, int, int, bytes]] = []
    try:
        for piece in pieces:
            if into_buffer:
                view = memoryview(piece)
                while view:
                    target = decoder.get_buffer()
                    n = min(len(target), len(view))
                    target[:n] = view[:n]
                    decoder.buffer_updated(n)
                    view = view[n:]
                    _drain(decoder, frames)
            else:
                decoder.feed(piece)
                _drain(decoder, frames)
        decoder.feed(b"")
        _drain(decoder, frames)
    except RemoteProtocolError as exc:
        return frames, str(exc)
    return frames, ""


def hunt(stream: bytes, pieces: list[bytes]) -> None:
    decoder = FrameDecoder()
    accept = (0, 1, Kind.REQUEST)
    for piece in pieces or [stream]:
        decoder.feed(piece)
        try:
            while (frame := decoder.hunt(accept)) is not None:
                assert (frame.service, frame.op, frame.kind) == accept
        except RemoteProtocolError:
            return


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.PickValueInList([MIN_MAX_PAYLOAD, MIN_MAX_PAYLOAD + 7, DEFAULT_MAX_PAYLOAD])
    stream = build_stream(fdp)
    pieces = chunks(fdp, stream)
    whole = decode([stream] if stream else [], limit, into_buffer=False)
    for frame in whole[0]:
        kind, service, op, rid, payload = frame
        assert 0 <= kind <= int(Kind.NOTIFY) and (kind == Kind.NOTIFY) == (rid == 0), frame
        assert encode_header(Kind(kind), service, op, rid, len(payload))[:4] == b"\x89VMI"
    assert decode(pieces, limit, into_buffer=False) == whole, "split stream decoded differently"
    assert decode(pieces, limit, into_buffer=True) == whole, "get_buffer path decoded differently"
    hunt(stream, pieces)
