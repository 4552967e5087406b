"""The contract every service's host half follows, and what the host manager gives it.

A host half is a :class:`HostService` subclass named ``SERVICE`` in the
``host`` module of its service's package (vmis.services.catalog). The host
manager makes one per service when it starts, and gives it a
:class:`HostContext` (the store, VM look-ups, the other services, the
hypervisor backends). For every VM it asks the service for a
:class:`VmPart`: that VM's state in this service, typed, owned by the VM's
session (vmis.host.session) and found again with
``session.part(KvpHost)``. A part learns what happens to its VM through the
``on_*`` methods below and talks to the guest only through its
:class:`VmContext` (``request``, ``link``), never through a channel.

Host halves run on the host only: they may use host-side libraries
(SQLAlchemy Core for their tables, on :data:`metadata`), and are left out of
the guest agent's bundle.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import sqlalchemy as sa

from vmis.errors import ProtocolError
from vmis.protocol.frames import Payload, Received
from vmis.protocol.session import decode_json
from vmis.services.catalog import ServiceSpec
from vmis.services.link import GuestLink, NotificationHandler, ServiceOffer
from vmis.services.status import OperationalStatus

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from vmis.services.hypervisor import Hypervisor

__all__ = [
    "Contact",
    "HostContext",
    "HostService",
    "Liveness",
    "VmContext",
    "VmPart",
    "VmRecord",
    "metadata",
]

#: the host store's schema: the registry's tables (vmis.host.store) and every
#: host half's own (:attr:`HostService.tables`)
metadata = sa.MetaData()

P = TypeVar("P", bound="VmPart")
S = TypeVar("S", bound="HostService[Any]")


@dataclass(frozen=True, slots=True)
class VmRecord:
    """A registered VM and its host-side settings, as the store keeps them."""

    id: str
    name: str
    channel: str
    qmp: str | None
    kind: str
    #: the guest agent it runs: the name of the GuestKind that opens its links
    guest_agent: str
    heartbeat_interval_ms: int
    heartbeat_latency_ms: int
    heartbeat_error_threshold: int
    #: service key -> enabled on the host
    enabled: dict[str, bool]
    #: the libvirt connection URI and domain UUID of a VM libvirt runs (vmis.libvirt)
    libvirt_uri: str | None = None
    libvirt_domain: str | None = None


class VmContext(Protocol):
    """What a host half sees of one VM: the host manager's session with it."""

    #: the VM's record, desired state included (replaced when it changes)
    vm: VmRecord
    log: logging.Logger
    #: the open link to the guest, None while there is none
    link: GuestLink | None
    #: True while a link is open and its handshake done
    connected: bool
    #: True once any link to this VM completed its handshake
    contacted: bool
    #: why the last link failed or ended
    last_error: str
    #: set when the VM was powered off from here (Stop-VM); Get-VM shows it Off
    powered_off: bool

    @property
    def agent(self) -> Mapping[str, Any]:
        """The guest agent's facts from the current (or last) link."""
        ...

    @property
    def guest(self) -> Mapping[str, ServiceOffer]:
        """What the guest offers, by service key (from the current or last link)."""
        ...

    def require(self, spec: ServiceSpec) -> None:
        """Raise ServiceUnavailable unless *spec* can take requests now."""
        ...

    async def request(self, spec: ServiceSpec, op: int, payload: Payload = b"",
                      timeout: float | None = 30.0, into: memoryview | None = None) -> Received:
        """One request of *spec* through the link, after :meth:`require`
        (*into*: Link.request's)."""
        ...

    def reconnect_now(self) -> None:
        """Open a new link at once rather than after the reconnect backoff."""
        ...

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until a link is open; False on timeout."""
        ...

    def part(self, service: type[HostService[P]]) -> P:
        """This VM's part of *service* (``session.part(KvpHost)``)."""
        ...

    def publish(self, type: str, **data: Any) -> None:
        """Tell the manager's event stream that something of this VM changed
        (``publish("kvp", Pool="Guest", Items=3)``: PascalCase members)."""
        ...

    def check_status(self) -> None:
        """Publish the services' statuses that changed: a part calls it when what
        its ``refine_status`` goes by changed (Heartbeat: the application health)."""
        ...


class HostContext(Protocol):
    """What a host half sees of the host manager."""

    #: where the manager keeps files of its own (None: nowhere, e.g. in tests)
    data_dir: Path | None

    @property
    def engine(self) -> Engine:
        """The store's database (SQLAlchemy Core); the half's tables exist in it."""
        ...

    def session(self, name: str) -> VmContext:
        """One VM by name (case-insensitive).

        :raise NotFoundError: When no such VM is registered.
        """
        ...

    def match(self, patterns: Sequence[str]) -> Sequence[VmContext]:
        """VMs whose names match any pattern (wildcards), by name.

        :raise NotFoundError: When a pattern without wildcards names no VM.
        """
        ...

    def current(self, vm_id: str) -> VmContext | None:
        """The VM's session if it is still registered (it may have been removed meanwhile)."""
        ...

    def service(self, cls: type[S]) -> S:
        """Another service's host half (``host.service(TimeSyncHost)``)."""
        ...

    def hypervisor_for(self, vm: VmRecord) -> Hypervisor | None:
        """The hypervisor backend that acts on *vm*, if one does."""
        ...

    def publish(self, type: str, *, vm_name: str | None = None, vm_id: str | None = None,
                **data: Any) -> None:
        """Tell the manager's event stream that something changed (vmis.host.events)."""
        ...


class Contact:
    """Whether a guest shows it is alive, in the words of Get-VM's Heartbeat property."""

    NO_CONTACT = "NoContact"
    LOST = "LostCommunication"
    OK = "Ok"


class Liveness(Protocol):
    """Whether the guest is alive, as a part of the liveness service tells (Heartbeat)."""

    def contact(self, now: float | None = None) -> str:
        """A :class:`Contact` word at *now* (monotonic seconds; default: the clock now)."""
        ...

    @property
    def interval_ms(self) -> int:
        """How often the guest shows it is alive: the host looks that often."""
        ...


class VmPart:
    """One VM's state in one service's host half; the VM's session owns it.

    Subclasses keep their state as typed attributes and override the hooks
    they need. Every hook runs on the manager's event loop.
    """

    def __init__(self, vm: VmContext) -> None:
        self.vm = vm

    def handlers(self) -> Mapping[int, NotificationHandler]:
        """Guest notifications this part takes: op -> handler (asked once per session)."""
        return {}

    def settings(self) -> dict[str, Any]:
        """The host's settings sent to the guest service with each start (SET_SERVICE)."""
        return {}

    def json_body(self, payload: bytes, what: str) -> dict[str, Any] | None:
        """A guest notification's JSON object, or None when it is not one.

        Handlers run in the link's bottom half: a bad payload is logged
        (``bad <what>: ...``) and ends nothing.
        """
        try:
            return decode_json(payload)
        except ProtocolError as exc:
            self.vm.log.warning("bad %s: %s", what, exc)
            return None

    def on_record_changed(self) -> None:
        """``self.vm.vm`` was replaced (vm set, Enable-/Disable-VMIntegrationService)."""

    def on_link_opened(self) -> None:
        """A link's handshake is done; the desired state is not applied yet."""

    def on_link_closed(self) -> None:
        """The link ended, or an attempt to open one failed."""

    async def on_running(self) -> None:
        """A link is open and the host's desired state applied: deliver what waited.

        Awaited in catalogue order after each (re)connect; a VmisError or
        OSError raised here is logged and does not stop the other parts.
        """

    def refine_status(self, primary: OperationalStatus, reason: str
                      ) -> tuple[OperationalStatus, OperationalStatus | None, str]:
        """The service's row while the guest runs it (OK or Degraded so far): a part
        that knows more (Heartbeat: beats, application health) says so here.

        :return: primary, secondary and reason of the row.
        """
        return primary, None, reason

    async def close(self) -> None:
        """The VM was removed or the manager is closing: end background work."""


class HostService(abc.ABC, Generic[P]):
    """Base class of the host halves: one per service per host manager.

    :param host: what the manager gives the service.
    """

    #: the service's catalogue line
    spec: ClassVar[ServiceSpec]
    #: tables this service keeps in the host's store (on :data:`metadata`)
    tables: ClassVar[tuple[sa.Table, ...]] = ()
    #: ops of its service this half sends: a link to an agent that lacks some
    #: says so in its offer (:attr:`ServiceOffer.limit`)
    needs: ClassVar[frozenset[int]] = frozenset()
    #: True for the service whose parts are :class:`Liveness` (Heartbeat)
    liveness: ClassVar[bool] = False

    def __init__(self, host: HostContext) -> None:
        self.host = host
        self.log = logging.getLogger(f"vmis.host.{self.spec.key}")

    @abc.abstractmethod
    def new_part(self, vm: VmContext) -> P:
        """A new VM's part of this service (called when its session is made)."""

    async def start(self) -> None:
        """The manager starts; the tables exist (e.g. mark work a dead manager left)."""

    async def close(self) -> None:
        """The manager is closing (after every VM's part was closed)."""
