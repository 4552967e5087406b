"""A test's own log handler: the records a logger emitted, kept in a list.

Used where a test must see what was logged whatever pytest's capture does
(its per-phase capture can be starved by an earlier test of the run), or
where a handler is the thing under test's sink.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class KeptRecords(logging.Handler):
    """Keeps every record it handles."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int | None = None) -> list[str]:
        """The messages kept (of records at exactly *level*, if given), in order."""
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@contextlib.contextmanager
def kept_records(logger: logging.Logger, level: int) -> Iterator[KeptRecords]:
    """*logger*'s records at *level* and above while the block runs; its level restored."""
    kept, before = KeptRecords(level), logger.level
    logger.addHandler(kept)
    logger.setLevel(level)
    try:
        yield kept
    finally:
        logger.removeHandler(kept)
        logger.setLevel(before)
