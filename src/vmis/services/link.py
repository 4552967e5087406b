"""The guest link: what a service's host half may ask of one guest, whatever agent it runs.

A host half never sees a channel, a socket or a wire protocol. It sends its
service's requests and notifications through the VM's current link and gets
the guest's notifications from it. A link is one live connection to one
guest's agent; when it ends, the VM's session (vmis.host.session) opens a new
one. Each kind of guest is a :class:`GuestKind` that opens links: the vmis
agent over the vmis protocol (vmis.links.vmis_agent) and qemu-ga, the QEMU
guest agent, over its own JSON protocol (vmis.links.qemu_ga).

Requests and notifications keep the service's own op codes and payloads
(docs/services/*.md): a link to a guest that runs another agent translates
them, and answers what that agent cannot do with a
:class:`~vmis.errors.RemoteServiceError` (``unknown-op``).

What a link offers decides the status of every service (docs/status.md):
its :class:`LinkHello` says, per service, the negotiated version, the
guest's state and start type, and, where the agent cannot do what the host
half needs (:attr:`HostService.needs <vmis.services.host_half.HostService.needs>`),
why not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from vmis.protocol.frames import Payload, Received
from vmis.protocol.services import Version

if TYPE_CHECKING:
    from vmis.services.host_half import VmRecord

__all__ = [
    "GuestKind",
    "GuestLink",
    "LinkEvents",
    "LinkHello",
    "NotificationHandler",
    "ServiceOffer",
]

#: takes the payload of one guest notification; runs in the link's bottom half,
#: so it must not block and logs (never raises) a bad payload
NotificationHandler = Callable[[bytes], None]


@dataclass(slots=True)
class ServiceOffer:
    """What a guest offers of one service, as the link learned it (and keeps it current)."""

    #: the version both sides speak; None when the guest has the service but no common version
    version: Version | None
    #: ``running`` or ``stopped``
    state: str
    #: ``automatic``, ``manual`` or ``disabled``
    startup: str
    #: the versions the guest speaks, when none is common with the host's
    offers: list[Version] = field(default_factory=list)
    #: why the guest's agent cannot do all the host half needs ("" when it can):
    #: statuses name it (docs/status.md)
    limit: str = ""


@dataclass(slots=True)
class LinkHello:
    """What a guest told about itself when the link opened."""

    #: agent facts: ``version``, ``boot_id``, ``kind``, ``last_update``... (docs/protocol.md §3.2)
    agent: dict[str, Any]
    #: service key -> offer; a key that is missing: the guest lacks the service
    services: dict[str, ServiceOffer]
    #: service key -> why the guest's agent lacks it, for an agent vmis does not
    #: update (qemu-ga: the release that added what the service needs); a vmis
    #: agent's missing service names the vmis release instead (docs/status.md)
    absent: dict[str, str] = field(default_factory=dict)


class LinkEvents(Protocol):
    """What a link tells the VM's session while it is open."""

    @property
    def handlers(self) -> Mapping[tuple[int, int], NotificationHandler]:
        """``(service, op)`` -> the host half's handler of that guest notification."""
        ...

    def service_state(self, key: str, state: str, startup: str) -> None:
        """The guest changed a service on its own (started, stopped, start type)."""
        ...

    def lost(self, reason: str) -> None:
        """The link ended (the session learns it before :meth:`GuestLink.wait_closed` returns)."""
        ...


class GuestLink(Protocol):
    """One open connection to a guest's agent."""

    #: the guest kind's name (``"vmis"``, ``"qemu-ga"``)
    kind: str
    #: what the guest said when the link opened; offers are kept current
    hello: LinkHello

    @property
    def max_payload(self) -> int:
        """The most bytes this side takes in one answer or notification."""
        ...

    @property
    def peer_max_payload(self) -> int:
        """The most bytes the guest takes in one request or notification."""
        ...

    @property
    def running(self) -> bool:
        """True until the link ends."""
        ...

    @property
    def lost_reason(self) -> str:
        """Why the link ended, "" while it has not."""
        ...

    async def request(self, service: int, op: int, payload: Payload = b"",
                      timeout: float | None = 30.0, into: memoryview | None = None) -> Received:
        """One request of a service; the answer's payload.

        *into* is the caller's buffer for a large answer, which then comes as
        ``into[:length]``; a link may ignore it (the answer then comes as usual).

        :raise RemoteServiceError: When the guest answers with an error.
        :raise RequestTimeout: When no answer comes within *timeout* seconds.
        :raise ChannelClosed: When the link ends first.
        """
        ...

    def notify(self, service: int, op: int, payload: Payload = b"") -> None:
        """One notification of a service (dropped when the link has ended)."""
        ...

    async def set_service(self, key: str, enabled: bool, settings: Mapping[str, Any],
                          timeout: float) -> dict[str, Any]:
        """Start or stop a guest service with the host's settings; the guest's answer
        (``state``, ``startup``), which the link also records in its offer.

        :raise RemoteServiceError: ``service-disabled`` when the guest cannot start it.
        """
        ...

    async def ping(self, timeout: float) -> None:
        """Ask the agent whether it still answers.

        :raise RequestTimeout: When it does not within *timeout* seconds.
        """
        ...

    async def install_agent(self, bundle: str, sha256: str, version: str,
                            timeout: float) -> dict[str, Any]:
        """Have the agent install a staged copy of itself and restart into it
        (docs/updates.md); its answer.

        :raise RemoteServiceError: When it refuses, or its kind cannot be updated so.
        """
        ...

    def close(self) -> None:
        """End the link; pending requests fail with ChannelClosed."""
        ...

    async def wait_closed(self) -> None:
        """Wait until the link has ended."""
        ...


class GuestKind(Protocol):
    """Opens links to the guests that run one kind of agent."""

    #: ``"vmis"``, ``"qemu-ga"``; a VM record names the kind of its guest
    name: str

    async def open(self, vm: VmRecord, events: LinkEvents) -> GuestLink:
        """Connect to *vm*'s guest, run the handshake and return the open link.

        :raise ChannelError: When the guest cannot be reached or does not answer.
        :raise RemoteServiceError: ``protocol-mismatch`` when no framework version is common.
        """
        ...
