"""The copies open in the guest: handles, their owners and their leases.

docs/services/fcopy.md §2 and §4.1. Every open copy (a file being written
or read, a tree being received or sent) has a handle, the **owner** that
opened it (the host's id of the copy, 1.1) and a **lease**: a handle no
request has used for :data:`~vmis.services.fcopy.LEASE` seconds is closed
(a file being written keeps its partial file for a resume). The host
closes all of a copy's handles at once when the copy ends, however it
ends (ABORT with the owner), and a new copy of the same file takes over a
handle that was left idle. Standard library only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from vmis.errors import ServiceError
from vmis.services.fcopy.bulk_memory import BULK_MEMORY
from vmis.services.fcopy.reader import Reader
from vmis.services.fcopy.receiver import Receiver
from vmis.services.fcopy.tree_source import Tree, TreeSource
from vmis.services.fcopy.tree_writer import TreeWriter

__all__ = ["Handles", "Open", "ReadOpen", "TreeIn", "TreeOut", "WriteOpen"]

T = TypeVar("T", bound="Open")

#: copies open at once; more is a host bug or abuse, answered ``busy``
MAX_OPEN = 64


class Open:
    """An open copy; subclasses hold what it works on."""

    kind = ""

    def __init__(self, owner: str) -> None:
        #: the host's id of the copy ("" from a 1.0 host)
        self.owner = owner
        self.last_used = time.monotonic()
        #: requests of this copy being answered now
        self.active = 0

    def row(self) -> dict[str, Any]:
        """What Get-VMFileCopy and ``vmis-guest fcopy status`` show of it."""
        return {"kind": self.kind, "owner": self.owner,
                "idle": round(time.monotonic() - self.last_used, 1)}


class WriteOpen(Open):
    """A file being copied into the guest; *tree*: the tree it belongs to (1.1)."""

    kind = "write"

    def __init__(self, owner: str, receiver: Receiver, tree: int = 0, rel: str = "") -> None:
        super().__init__(owner)
        self.receiver = receiver
        self.tree = tree
        self.rel = rel

    def row(self) -> dict[str, Any]:
        r = self.receiver
        return {**super().row(), "direction": "to-guest", "path": r.path, "size": r.size,
                "done": r.written, "resumed": r.resumed}


class ReadOpen(Open):
    """A file being copied out of the guest."""

    kind = "read"

    def __init__(self, owner: str, reader: Reader) -> None:
        super().__init__(owner)
        self.reader = reader

    def row(self) -> dict[str, Any]:
        return {**super().row(), "direction": "from-guest", "path": self.reader.display,
                "size": self.reader.size, "done": self.reader.pos}


class TreeIn(Open):
    """A tree being copied into the guest (1.1)."""

    kind = "tree-in"

    def __init__(self, owner: str, writer: TreeWriter) -> None:
        super().__init__(owner)
        self.writer = writer
        #: runs the writer's work, one batch after the other in the order sent
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="fcopy-tree")
        #: the TREE_PUT expected next: batches are taken in the order sent
        self.seq = 0

    def row(self) -> dict[str, Any]:
        return {**super().row(), "direction": "to-guest", "path": self.writer.top,
                "files": self.writer.files, "done": self.writer.bytes}


class TreeOut(Open):
    """A tree being copied out of the guest (1.1): its walk, and a reader of its files."""

    kind = "tree-out"

    def __init__(self, owner: str, tree: Tree, source: TreeSource, path: str) -> None:
        super().__init__(owner)
        self.tree = tree
        self.entries = tree.entries()
        self.source = source
        self.path = path
        self.sent = 0
        #: reads the tree's files, one batch after the other
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="fcopy-tree")

    def row(self) -> dict[str, Any]:
        return {**super().row(), "direction": "from-guest", "path": self.path,
                "files": len(self.tree.files), "done": self.sent}


class Handles:
    """The open copies by handle."""

    def __init__(self) -> None:
        self._open: dict[int, Open] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._open)

    def items(self) -> list[tuple[int, Open]]:
        return list(self._open.items())

    def add(self, item: Open) -> int:
        """Give an open copy a handle.

        :raise ServiceError: ``busy`` when :data:`MAX_OPEN` are open.
        """
        if len(self._open) >= MAX_OPEN:
            raise ServiceError("busy", f"{MAX_OPEN} copies are already open in the guest")
        handle = self._next
        self._next = handle % 0x7FFFFFFF + 1
        self._open[handle] = item
        BULK_MEMORY.acquire()
        return handle

    def pop(self, handle: int) -> Open | None:
        """Forget a handle (closing what it holds is the caller's)."""
        item = self._open.pop(handle, None)
        if item is not None:
            BULK_MEMORY.release()
        return item

    def get(self, handle: object, kind: type[T]) -> T:
        """The open copy of *handle*, which must be a *kind*.

        :raise ServiceError: ``bad-request`` otherwise.
        """
        item = self._open.get(handle) if isinstance(handle, int) else None
        if not isinstance(item, kind):
            raise ServiceError("bad-request", f"no open copy with handle {handle}")
        item.last_used = time.monotonic()
        return item

    @staticmethod
    @contextlib.contextmanager
    def using(item: Open) -> Iterator[None]:
        """A request of *item* is being answered: its lease does not run out meanwhile."""
        item.active += 1
        try:
            yield
        finally:
            item.active -= 1
            item.last_used = time.monotonic()

    def owned_by(self, owner: str) -> list[int]:
        return [h for h, item in self._open.items() if owner and item.owner == owner]

    def expired(self, lease: float) -> list[int]:
        """Handles no request has used for *lease* seconds."""
        now = time.monotonic()
        return [h for h, item in self._open.items()
                if item.active == 0 and now - item.last_used > lease]

    def writing(self, token: str) -> list[tuple[int, WriteOpen]]:
        """Open writes of the copy *token* names."""
        return [(h, item) for h, item in self._open.items()
                if isinstance(item, WriteOpen) and item.receiver.token == token]

    def tags(self) -> set[str]:
        """Tags of the partial files open copies are writing (the sweep leaves them)."""
        tags = set()
        for item in self._open.values():
            if isinstance(item, WriteOpen):
                tags.add(item.receiver.token[:16])
            elif isinstance(item, TreeIn):
                tags.add(item.writer.tag)
        return tags
