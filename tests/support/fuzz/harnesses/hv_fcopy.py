"""The Hyper-V file-copy daemon's request handler (``vmis.hyperv.fcopy.FcopyHandler``)
and the uio daemon's IC packet processing (``UioFcopyDaemon.process``).

The host names absolute paths; the daemon, like the C one, writes where it
is told. So the harness confines the paths it sends to a scratch directory
(the directory part is the scratch directory plus the input's components,
``..`` dropped; the file name is the input's, as it is), and caps the size
of any file this process writes (RLIMIT_FSIZE: past it a write fails with
EFBIG; Python ignores SIGXFSZ). Everything else is the input's: flags,
offsets (a u64), sizes, data, the order of operations, packets of any
length.

May raise: RemoteProtocolError for a message shorter than its header or its
structure (``handle``), or an IC packet shorter than its headers
(``process``). Checked: the reply is a known HRESULT, and a reset (the
channel lost) leaves no temporary file behind.
"""

from __future__ import annotations

import functools
import logging
import resource
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import atheris

from support.fuzz.scratch import scratch_dir
from vmis.errors import RemoteProtocolError
from vmis.hyperv.constants import FcopyOp, HResult, IcMsgType
from vmis.hyperv.fcopy import FcopyHandler
from vmis.hyperv.messages import (
    FCOPY_START,
    ICMSG_HDR,
    VMBUSPIPE_HDR,
    FcopyData,
    FcopyStart,
    IcHeader,
)
from vmis.hyperv.uio import UioFcopyDaemon

_CODES = {int(c) for c in HResult}
#: the largest file this process may write
_FILE_LIMIT = 1 << 20
@dataclass
class _Daemon:
    handler: FcopyHandler
    uio: UioFcopyDaemon
    dir: Path


@functools.cache
def setup() -> _Daemon:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = _FILE_LIMIT if hard == resource.RLIM_INFINITY else min(_FILE_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    logger = logging.getLogger("vmis.fuzz.hv_fcopy")
    logger.disabled = True
    handler = FcopyHandler(logger)
    # process() reaches only the handler; the channel is never touched
    uio = UioFcopyDaemon(None, handler, None, logger)  # type: ignore[arg-type]
    return _Daemon(handler, uio, scratch_dir("hv-fcopy"))


def _directory(fdp: atheris.FuzzedDataProvider, base: Path) -> str:
    words = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)).split("/")
    inside = [w for w in words if w not in ("", ".", "..") and "\0" not in w]
    return "/".join([str(base / "files"), *inside])


def _name(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeBool():
        return str(fdp.PickValueInList(["f", "a.bin", ".", "..", "x/y", "", "é" * 100]))
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 30)).replace("\0", "")


def _offset(fdp: atheris.FuzzedDataProvider) -> int:
    roll = fdp.ConsumeIntInRange(0, 9)
    if roll == 0:
        return fdp.ConsumeIntInRange(0, 2**64 - 1)
    if roll == 1:
        return _FILE_LIMIT - fdp.ConsumeIntInRange(-64, 6144)
    return fdp.ConsumeIntInRange(0, 20000)


def _message(fdp: atheris.FuzzedDataProvider, base: Path) -> bytes:
    op = fdp.ConsumeIntInRange(0, 4)
    if op == FcopyOp.START_FILE_COPY:
        return FcopyStart(_name(fdp).encode("utf-8", "surrogateescape")[:519],
                          _directory(fdp, base).encode()[:519], fdp.ConsumeIntInRange(0, 7),
                          fdp.ConsumeIntInRange(0, 2**64 - 1)).pack()
    if op == FcopyOp.WRITE_TO_FILE:
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6144))
        message = FcopyData(_offset(fdp), data).pack()
        if fdp.ConsumeProbability() > 0.95:  # a size field past the fragment
            message = message[:40] + struct.pack("<I", fdp.ConsumeIntInRange(0, 2**32 - 1)) \
                + message[44:]
        return message
    if op in (FcopyOp.COMPLETE_FCOPY, FcopyOp.CANCEL_FCOPY):
        return struct.pack("<I", op) + bytes(32)
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))


def _packet(fdp: atheris.FuzzedDataProvider, message: bytes) -> bytearray:
    """The IC packet the uio daemon reads: headers, then the message (names in UTF-16)."""
    msgtype = IcMsgType.FCOPY if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 11)
    if message[:4] == b"\0\0\0\0" and len(message) == FCOPY_START.size:
        op, s0, s1, fname, pname, flags, size = FCOPY_START.unpack(message)
        message = FCOPY_START.pack(
            op, s0, s1, fname.rstrip(b"\0").decode("utf-8", "replace").encode("utf-16-le"),
            pname.rstrip(b"\0").decode("utf-8", "replace").encode("utf-16-le"), flags, size)
    header = IcHeader(msgtype, msgsize=len(message)).pack()
    packet = bytearray(header + message)
    if fdp.ConsumeProbability() > 0.9:
        packet = packet[: fdp.ConsumeIntInRange(0, len(packet))]
    return packet


def _leftovers(base: Path) -> list[Path]:
    return list((base / "files").rglob(".*.vmis-fcopy-*"))


def one_input(data: bytes) -> None:
    daemon = setup()
    _handler, _uio = daemon.handler, daemon.uio
    fdp = atheris.FuzzedDataProvider(data)
    try:
        for _ in range(fdp.ConsumeIntInRange(1, 6)):
            message = _message(fdp, daemon.dir)
            via_uio = fdp.ConsumeProbability() > 0.8
            try:
                if via_uio:
                    packet = _packet(fdp, message)
                    reply = _uio.process(packet)
                    status = ICMSG_HDR.unpack_from(reply, VMBUSPIPE_HDR.size)[6]
                else:
                    (status,) = struct.unpack("<I", _handler.handle(message))
            except RemoteProtocolError:
                continue
            assert status in _CODES, hex(status)
        _handler.reset()
        assert _leftovers(daemon.dir) == [], "a reset left a temporary file"
    finally:
        _handler.reset()
        shutil.rmtree(daemon.dir / "files", ignore_errors=True)
