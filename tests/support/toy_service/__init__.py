"""A toy integration service, made the way a new service is added (docs/architecture.md).

One package (this one: the wire here, ``guest.py``, ``host.py``) and one
catalogue line (:data:`TOY`, which tests add with :func:`catalogue_line`).
It answers ECHO requests and tells the host, by a COUNT notification, how
many it answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import IntEnum

from vmis.services.catalog import CATALOG, ServiceSpec, StartupType

#: the service's wire number: one no real service uses
TOY_ID = 200


class ToyOp(IntEnum):
    #: host -> guest request: the payload comes back
    ECHO = 1
    #: guest -> host notification: {"answered": n}
    COUNT = 2


TOY = ServiceSpec(TOY_ID, "toy", "Toy Service", "vmictoy", "vmis Toy Service", True,
                  StartupType.AUTOMATIC, ((1, 1), (1, 0)), "a toy service for tests",
                  package="support.toy_service")


@contextlib.contextmanager
def catalogue_line(spec: ServiceSpec = TOY) -> Iterator[ServiceSpec]:
    """The toy's line in the catalogue, for the duration of a test."""
    CATALOG.add(spec)
    try:
        yield spec
    finally:
        CATALOG.remove(spec.key)
