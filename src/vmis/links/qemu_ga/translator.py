"""What every service's translation onto qemu-ga shares.

A host half sends its service's own requests (op codes and payloads of
docs/services/*.md); the qemu-ga link hands each to the service's
:class:`Translator`, which carries it out with qemu-ga commands and answers
in the service's own words. Notifications a host half expects from the
guest (Heartbeat's BEAT, KVP's POOL, VM Session's OUTPUT and EXIT) are made
by the translators and delivered through :meth:`LinkContext.to_host`, so the
host halves run unchanged (tests/host/test_fake_link.py shows the seam).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from vmis.errors import RemoteServiceError
from vmis.links.qemu_ga.connection import QgaConnection
from vmis.links.qemu_ga.offers import AgentInfo
from vmis.protocol import Payload, Received, decode_json, decode_json_raw
from vmis.services.catalog import ServiceSpec

__all__ = ["Handler", "LinkContext", "Translator", "split_payload"]

#: one request of a service: its payload and timeout -> the answer's payload
Handler = Callable[[Payload, "float | None"], Awaitable[Received]]


class LinkContext(Protocol):
    """What a translator sees of its qemu-ga link."""

    #: the VM's name, for messages
    name: str
    log: logging.Logger
    conn: QgaConnection
    agent: AgentInfo
    #: True while this link holds the guest's filesystems frozen (VSS)
    frozen: bool
    #: qemu-ga file handles open for the VM (they outlive a connection)
    handles: set[int]

    async def call(self, command: str, arguments: Mapping[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        """One qemu-ga command (a frozen guest's refusals read ``busy``)."""
        ...

    def to_host(self, service: int, op: int, payload: bytes) -> None:
        """Deliver a notification of *service* to its host half, as a guest would send it."""
        ...

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run work that lives as long as the link (cancelled when it closes)."""
        ...


class Translator:
    """One service's requests carried out with qemu-ga commands.

    Subclasses fill :attr:`ops` and override what they need.
    """

    spec: ServiceSpec

    def __init__(self, link: LinkContext) -> None:
        self.link = link
        self.ops: dict[int, Handler] = {}

    async def request(self, op: int, payload: Payload, timeout: float | None) -> Received:
        """Carry out one request of the service.

        :raise RemoteServiceError: ``unknown-op`` for an operation qemu-ga has no
            counterpart of; qemu-ga's own refusals with their codes.
        """
        handler = self.ops.get(op)
        if handler is None:
            raise RemoteServiceError(
                "unknown-op", f"{self.link.agent.label} cannot do operation {op} of "
                              f"{self.spec.host_name or self.spec.guest_name}")
        return await handler(payload, timeout)

    def notify(self, op: int, payload: Payload) -> None:
        """A notification of the host half to the guest (dropped unless overridden)."""

    def set_enabled(self, enabled: bool, settings: Mapping[str, Any]) -> None:
        """The host started (with its settings) or stopped the service."""

    def close(self) -> None:
        """The link ended."""


def split_payload(payload: Payload) -> tuple[dict[str, Any], memoryview]:
    """A json+raw payload (docs/protocol.md §2.2) as its object and its raw bytes.

    A host half's payload may be one buffer or the parts
    :func:`~vmis.protocol.encode_json_raw` made (the raw part not copied).
    """
    if isinstance(payload, tuple):
        head = bytes(payload[0])
        body, rest = decode_json_raw(head)
        raw = payload[1] if len(payload) == 2 else b"".join(bytes(p) for p in payload[1:])
        return body, memoryview(raw) if not rest else memoryview(bytes(rest) + bytes(raw))
    return decode_json_raw(bytes(payload) if isinstance(payload, memoryview) else payload)


def json_body(payload: Payload) -> dict[str, Any]:
    """A json payload as its object."""
    if isinstance(payload, tuple):
        return decode_json(b"".join(bytes(p) for p in payload))
    return decode_json(bytes(payload) if isinstance(payload, memoryview) else payload)
