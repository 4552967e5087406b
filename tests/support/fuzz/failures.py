"""Failures that only reach a log: a background task that died, an unretrieved exception.

The agent and the manager log such failures instead of raising them (their
loops go on); a harness counts them as crashes all the same.
"""

from __future__ import annotations

import logging

__all__ = ["LoggedFailures"]


class LoggedFailures(logging.Handler):
    """Keeps ERROR records that carry a traceback, from the loggers it is installed on."""

    def __init__(self, *loggers: str) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        for name in loggers:
            logging.getLogger(name).addHandler(self)
            logging.getLogger(name).propagate = False
        logging.getLogger("vmis").setLevel(logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)

    def raise_first(self) -> None:
        """Raise the first failure kept since the last call, with its exception as the cause."""
        if self.records:
            record = self.records[0]
            self.records.clear()
            raise AssertionError(f"logged as a failure: {record.getMessage()}") \
                from (record.exc_info[1] if record.exc_info else None)
