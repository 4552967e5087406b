"""The Hyper-V VSS daemon's request handler (``vmis.hyperv.vss.VssHandler``).

Up to eight messages in a row (12-byte ``hv_vss_msg``, or another length;
FREEZE and THAW often), each maybe followed by the watchdog's deadline or a
channel reset, over a freezer that only remembers (vmis.services.vss.freeze.FakeFreezer),
in a scratch root with the lab's mount table.

May raise: RemoteProtocolError for a message that is not 12 bytes.
Checked: the reply is the message with a known HRESULT over its first four
bytes; the log is held exactly while the handler says it is frozen; after
a reset nothing is frozen.
"""

from __future__ import annotations

import functools
import logging
import struct
from dataclasses import dataclass

import atheris

from support.fuzz.scratch import scratch_dir
from vmis.errors import RemoteProtocolError
from vmis.guest.adapters import LAB_MOUNTS
from vmis.hyperv.constants import HResult, VssOp
from vmis.hyperv.daemon import HoldableHandler
from vmis.hyperv.messages import VSS_MSG_SIZE, VssMessage
from vmis.hyperv.vss import VssHandler
from vmis.services.vss.freeze import FakeFreezer, FilesystemFreeze

_CODES = {int(c) for c in HResult}
_now = [0.0]


@dataclass
class _Daemon:
    handler: VssHandler
    freezer: FakeFreezer
    holder: HoldableHandler


@functools.cache
def setup() -> _Daemon:
    root = scratch_dir("hv-vss")
    (root / "proc").mkdir()
    (root / "proc/mounts").write_text(LAB_MOUNTS)
    freezer = FakeFreezer()
    holder = HoldableHandler(logging.NullHandler())
    logger = logging.getLogger("vmis.fuzz.hv_vss")
    logger.addHandler(holder)
    logger.propagate = False
    handler = VssHandler(FilesystemFreeze(freezer, root), holder, logger, thaw_timeout=5,
                         clock=lambda: _now[0])
    return _Daemon(handler, freezer, holder)


def one_input(data: bytes) -> None:
    daemon = setup()
    _handler, _freezer, _holder = daemon.handler, daemon.freezer, daemon.holder
    fdp = atheris.FuzzedDataProvider(data)
    try:
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            op = fdp.PickValueInList([VssOp.FREEZE, VssOp.THAW, VssOp.HOT_BACKUP]) \
                if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 255)
            message = VssMessage(op, fdp.ConsumeIntInRange(0, 0xFFFFFFFF)).pack()
            if fdp.ConsumeProbability() > 0.95:
                message = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 20))
            try:
                reply = _handler.handle(message)
            except RemoteProtocolError:
                assert len(message) != VSS_MSG_SIZE
                continue
            assert len(reply) == VSS_MSG_SIZE and reply[4:] == message[4:]
            assert struct.unpack_from("<I", reply)[0] in _CODES
            assert _holder.holding == _handler.frozen == bool(_freezer.frozen)
            then = fdp.ConsumeIntInRange(0, 2)
            if then == 1:
                _now[0] += fdp.ConsumeIntInRange(0, 10)
                deadline = _handler.deadline()
                if deadline is not None and _now[0] >= deadline:
                    _handler.on_deadline()
                    assert not _handler.frozen and not _freezer.frozen
            elif then == 2:
                _handler.reset()
                assert not _handler.frozen and not _freezer.frozen
    finally:
        _handler.reset()
        _freezer.calls.clear()
    assert not _freezer.frozen and not _holder.holding
