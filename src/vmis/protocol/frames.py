"""Frame codec of docs/protocol.md §2: bytes in, frames out.

No I/O happens here. :class:`FrameDecoder` buffers whatever the caller feeds
it and hands back complete frames; :func:`encode_frame` turns a frame into
the buffers to write. Both directions are written for bulk data: encoding
returns the header and the payload as separate buffers so a caller can write
them without concatenating, and a large payload is received straight into
its own buffer. A caller that can read into memory it is given (asyncio's
``BufferedProtocol``) asks :meth:`FrameDecoder.get_buffer` where to put the
next bytes, and the kernel then copies a large payload once, into the
``bytearray`` the frame will carry; bytes that are fed instead are copied
there once too, never gathered and joined.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from vmis.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "HEADER_SIZE",
    "MAGIC",
    "MIN_MAX_PAYLOAD",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "Kind",
    "Payload",
    "Received",
    "encode_frame",
    "payload_size",
]

#: docs/protocol.md §2.1: the first byte is not ASCII so text is never a frame
MAGIC = b"\x89VMI"
#: docs/protocol.md §2.1: framing version
VERSION = 1
#: magic, version, kind, service, op, id, length, header CRC-32
_HEADER = struct.Struct("<4sBBBBIII")
HEADER_SIZE = _HEADER.size
_CRC_SPAN = HEADER_SIZE - 4
#: docs/protocol.md §2.4
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
MIN_MAX_PAYLOAD = 64 * 1024
#: a payload at least this long that is still arriving is received into a
#: buffer of its own instead of the shared receive buffer (one copy, no join)
_LARGE_FROM = 64 * 1024
#: what get_buffer offers between large payloads: a frame header and small
#: frames land here, and at most this much of a large payload's start is
#: copied once more into the payload's own buffer
_SCRATCH = 64 * 1024
_MAX_U32 = 0xFFFFFFFF


class Kind(IntEnum):
    """Frame kinds, docs/protocol.md §2.3."""

    #: expects exactly one RESPONSE or ERROR with the same id
    REQUEST = 0
    #: successful answer to a request
    RESPONSE = 1
    #: failed answer; payload is json ``{"code", "message"}``
    ERROR = 2
    #: one-way message, id 0, never answered
    NOTIFY = 3


#: an outgoing payload may be several buffers, written one after another
#: without being joined (bulk data is never copied to be framed)
Payload = bytes | bytearray | memoryview | tuple[bytes | memoryview, ...]
#: a received payload: ``bytes``, or for a large one the ``bytearray`` it was
#: received into (nothing else holds it; it is not copied to become ``bytes``),
#: or a view of the buffer the request's sender gave for its answer
#: (:meth:`FrameDecoder.answer_into`)
Received = bytes | bytearray | memoryview


def payload_size(payload: Payload) -> int:
    """Length in bytes of a payload given as one buffer or several."""
    if isinstance(payload, tuple):
        return sum(memoryview(p).nbytes for p in payload)
    return memoryview(payload).nbytes


#: wire value -> Kind, without an Enum call per received frame
_KINDS = tuple(Kind)
_NOTIFY = int(Kind.NOTIFY)

@dataclass(slots=True)
class Frame:
    """One frame of docs/protocol.md §2.1, header fields plus payload.

    Received frames carry :data:`Received` (``bytes``, or a ``bytearray`` or a
    view of the caller's buffer for a large payload); frames to send may
    carry a tuple of buffers.
    """

    kind: Kind
    service: int
    op: int
    id: int
    payload: Payload = b""

    @property
    def body(self) -> Received:
        """The payload of a received frame (:data:`Received`)."""
        if not isinstance(self.payload, bytes | bytearray | memoryview):
            raise LocalProtocolError("body is only defined for received frames")
        return self.payload



def _check_outgoing(frame: Frame) -> None:
    # Received frames are checked from their header (FrameDecoder._check_header),
    # so the check lives here rather than in Frame's constructor, which the
    # decoder runs for every frame it hands out.
    if not 0 <= frame.service <= 0xFF or not 0 <= frame.op <= 0xFF:
        raise LocalProtocolError(f"service and op must fit in a byte: {frame.service}/{frame.op}")
    if not 0 <= frame.id <= _MAX_U32:
        raise LocalProtocolError(f"request id out of range: {frame.id}")
    if (frame.kind is Kind.NOTIFY) != (frame.id == 0):
        raise LocalProtocolError("notifications, and only they, carry id 0")


def encode_header(kind: Kind, service: int, op: int, id: int, length: int) -> bytes:
    """Return the 20-byte header of a frame, checksum included."""
    head = _HEADER.pack(MAGIC, VERSION, kind, service, op, id, length, 0)[:_CRC_SPAN]
    return head + (zlib.crc32(head) & _MAX_U32).to_bytes(4, "little")


def encode_frame(
    frame: Frame, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> list[bytes | memoryview]:
    """Encode *frame* as ``[header, *payload buffers]`` (empty buffers omitted).

    :param max_payload: the peer's announced limit (docs/protocol.md §2.4).
    :raise LocalProtocolError: When the payload exceeds *max_payload*, or a
        header field is out of range.
    """
    _check_outgoing(frame)
    size = payload_size(frame.payload)
    if size > max_payload:
        raise LocalProtocolError(
            f"payload of {size} bytes exceeds the peer's limit of {max_payload}"
        )
    header = encode_header(frame.kind, frame.service, frame.op, frame.id, size)
    payload = frame.payload
    if isinstance(payload, bytearray):
        payload = memoryview(payload)
    parts = payload if isinstance(payload, tuple) else (payload,)
    return [header, *(p for p in parts if len(p))]


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes, then call :meth:`next_frame`.

    Reading a short frame out of a long buffer costs O(frame), not O(buffer):
    consumed bytes are skipped by an offset and only compacted once they make
    up most of the buffer.

    Instead of :meth:`feed`, a caller may receive straight into the decoder:
    :meth:`get_buffer`, read into it, :meth:`buffer_updated`. While a large
    payload arrives that buffer is the rest of the payload's own
    ``bytearray``, so its bytes are copied once, by the kernel.

    :param max_payload: our own limit; a longer frame is rejected from its
        header, before any of its payload is buffered.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if max_payload < MIN_MAX_PAYLOAD:
            raise ValueError(f"max_payload below the protocol minimum of {MIN_MAX_PAYLOAD}")
        #: our limit, announced to the peer in HELLO
        self.max_payload = max_payload
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        #: a large frame in progress: its header fields, its payload buffer
        #: (allocated whole from the header) and how much of it has arrived
        self._large: tuple[Kind, int, int, int] | None = None
        self._payload: bytearray | memoryview = bytearray()
        self._fill = 0
        #: request id -> where a large answer to it goes (answer_into)
        self._into: dict[int, memoryview] = {}
        #: the scratch buffer get_buffer() last handed out (our own, or the caller's)
        self._scratch_view: memoryview | None = None
        # Made at the first get_buffer() without a scratch of the caller's: a
        # decoder fed with feed() never needs one, and a host holds one per VM.
        self._own_scratch: memoryview | None = None

    # Section: feeding

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; an empty *data* marks the end of the stream.

        The bytes are copied: *data* may be reused by the caller at once.

        :raise RuntimeError: When data is fed after the end of the stream.
        """
        if self._eof:
            raise RuntimeError("data fed after end of stream")
        if not data:
            self._eof = True
            return
        if self._large is not None:
            view = memoryview(data).cast("B")
            n = min(len(view), len(self._payload) - self._fill)
            self._payload[self._fill : self._fill + n] = view[:n]
            self._fill += n
            if n < len(view):
                self._buf += view[n:]
            return
        self._buf += data

    def get_buffer(self, scratch: memoryview | None = None) -> memoryview:
        """Where the caller may write the next received bytes (then :meth:`buffer_updated`).

        During a large payload this is the part of the payload still to
        come, and never reaches past it; otherwise a scratch buffer whose
        bytes :meth:`buffer_updated` copies into the receive buffer.

        :param scratch: the caller's scratch buffer (at least a frame header
            long), which it may share between decoders that it serves one
            get_buffer/buffer_updated pair at a time; default one of the
            decoder's own, 64 KiB.
        """
        if self._large is not None and self._fill < len(self._payload):
            return memoryview(self._payload)[self._fill :]
        if scratch is None:
            if self._own_scratch is None:
                self._own_scratch = memoryview(bytearray(_SCRATCH))
            scratch = self._own_scratch
        self._scratch_view = scratch
        return scratch

    def buffer_updated(self, nbytes: int) -> None:
        """*nbytes* were written at the start of the last :meth:`get_buffer`."""
        if self._eof:
            raise RuntimeError("data fed after end of stream")
        if nbytes <= 0:
            return
        if self._large is not None and self._fill < len(self._payload):
            self._fill += min(nbytes, len(self._payload) - self._fill)
            return
        if self._scratch_view is None:
            raise RuntimeError("buffer_updated() without get_buffer()")
        self._buf += self._scratch_view[:nbytes]

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet consumed."""
        return len(self._buf) - self._pos + self._fill

    @property
    def at_eof(self) -> bool:
        """True once the end of the stream was fed."""
        return self._eof

    def clear(self) -> None:
        """Drop every buffered byte (used when a session is reset)."""
        self._buf.clear()
        self._pos = 0
        self._large = None
        self._payload = bytearray()
        self._fill = 0
        self._into.clear()

    def answer_into(self, request_id: int, buffer: memoryview) -> None:
        """Receive a large RESPONSE to *request_id* into *buffer* (its first bytes).

        The frame then carries ``buffer[:length]``: the caller's memory, which
        it may have aligned for direct I/O or may reuse once done with the
        answer, instead of a new ``bytearray`` zeroed for each answer. A
        response longer than *buffer*, or under the large-frame size, is
        received as usual. The decoder forgets *buffer* once a response to
        the id starts arriving, or at :meth:`drop_answer_buffer`.
        """
        self._into[request_id] = buffer

    def drop_answer_buffer(self, request_id: int | None = None) -> None:
        """Forget the buffer :meth:`answer_into` gave for *request_id* (None: every
        request's), where no answer has started to arrive in it."""
        if request_id is None:
            self._into.clear()
        else:
            self._into.pop(request_id, None)

    def _callers_buffer(self, kind: Kind, id: int, length: int) -> memoryview | None:
        into = self._into.pop(id, None) if kind is Kind.RESPONSE and self._into else None
        return into[:length] if into is not None and len(into) >= length else None

    # Section: decoding

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        :raise RemoteProtocolError: On any framing error of docs/protocol.md
            §2.4, including end of stream inside a frame.
        """
        if self._large is not None:
            return self._next_large()
        # A host reads a beat from every VM every interval: the common case
        # (a whole small frame, or nothing buffered) takes few steps.
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail and buf[pos] == 0:
            self._skip_padding()
            buf, pos = self._buf, self._pos
            avail = len(buf) - pos
        if avail < HEADER_SIZE:
            if self._eof and avail:
                raise RemoteProtocolError(f"stream ended inside a frame header ({avail} bytes)")
            return None
        kind, service, op, id, length = self._check_header(pos)
        start = pos + HEADER_SIZE
        end = start + length
        if end > len(buf):
            if self._eof:
                raise RemoteProtocolError("stream ended inside a frame payload")
            if length >= _LARGE_FROM:
                # The rest goes straight into the payload's own buffer; what
                # is here already is copied there once.
                have = len(buf) - start
                into = self._callers_buffer(kind, id, length)
                self._payload = bytearray(length) if into is None else into
                self._payload[:have] = memoryview(buf)[start:]
                self._fill = have
                self._large = (kind, service, op, id)
                self._consume(len(buf))
            return None
        into = self._callers_buffer(kind, id, length) if length >= _LARGE_FROM else None
        if into is None:
            payload: Received = bytes(buf[start:end])
        else:
            into[:] = memoryview(buf)[start:end]
            payload = into
        self._consume(end)
        return Frame(kind, service, op, id, payload)

    def _next_large(self) -> Frame | None:
        assert self._large is not None
        if self._fill < len(self._payload):
            if self._eof:
                raise RemoteProtocolError("stream ended inside a frame payload")
            return None
        kind, service, op, id = self._large
        payload = self._payload
        self._large = None
        self._payload = bytearray()
        self._fill = 0
        return Frame(kind, service, op, id, payload)

    def _unlarge(self) -> None:
        # Hunting re-scans raw bytes: put a partial large frame back as bytes.
        if self._large is not None:
            kind, service, op, id = self._large
            header = encode_header(kind, service, op, id, len(self._payload))
            self._buf = (bytearray(header) + memoryview(self._payload)[: self._fill]
                         + self._buf[self._pos :])
            self._pos = 0
            self._large = None
            self._payload = bytearray()
            self._fill = 0

    def hunt(self, accept: tuple[int, int, Kind]) -> Frame | None:
        """Skip bytes until a frame with the given ``(service, op, kind)`` is whole.

        Used while resynchronising (docs/protocol.md §3.1): every byte that is
        not part of such a frame is discarded, including valid frames of other
        types. A frame start whose header checksum fails is skipped one byte
        at a time, so garbage that merely contains the magic cannot derail
        the search.

        :return: the frame, or None if more bytes are needed.
        """
        self._unlarge()
        while True:
            start = self._buf.find(MAGIC, self._pos)
            if start < 0:
                # Keep the tail: it may be the first bytes of a split magic.
                keep = min(len(self._buf) - self._pos, len(MAGIC) - 1)
                self._consume(len(self._buf) - keep)
                return None
            self._consume(start)
            if len(self._buf) - self._pos < HEADER_SIZE:
                return None
            try:
                kind, service, op, _id, length = self._check_header(self._pos)
            except RemoteProtocolError:
                self._consume(self._pos + 1)
                continue
            if (service, op, kind) != accept:
                if self._pos + HEADER_SIZE + length > len(self._buf):
                    # Do not wait for the body of a frame we will discard:
                    # skip its header and keep scanning what follows.
                    self._consume(self._pos + HEADER_SIZE)
                else:
                    self._consume(self._pos + HEADER_SIZE + length)
                continue
            frame = self.next_frame()
            return frame

    def _skip_padding(self) -> None:
        # docs/protocol.md §2.4: zero bytes between frames are padding (the
        # host's resync flush); no frame starts with 0 (the magic is 0x89...).
        rest = self._buf[self._pos :]
        self._consume(self._pos + len(rest) - len(rest.lstrip(b"\0")))

    def _check_header(self, pos: int) -> tuple[Kind, int, int, int, int]:
        magic, version, kind, service, op, id, length, crc = _HEADER.unpack_from(self._buf, pos)
        if (magic == MAGIC and version == VERSION and kind <= _NOTIFY
                and length <= self.max_payload and (kind == _NOTIFY) is (id == 0)
                and zlib.crc32(self._buf[pos : pos + _CRC_SPAN]) == crc):
            return _KINDS[kind], service, op, id, length
        if magic != MAGIC:
            raise RemoteProtocolError(f"bad frame magic {bytes(magic)!r}")
        if zlib.crc32(self._buf[pos : pos + _CRC_SPAN]) != crc:
            raise RemoteProtocolError("frame header checksum mismatch")
        if version != VERSION:
            raise RemoteProtocolError(f"unsupported framing version {version}")
        if kind > Kind.NOTIFY:
            raise RemoteProtocolError(f"unknown frame kind {kind:#x}")
        if length > self.max_payload:
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.max_payload}"
            )
        raise RemoteProtocolError("notification id must be 0 and request ids non-zero")

    def _consume(self, end: int) -> None:
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
