"""The vmis guest agent as a guest link: the vmis protocol over one channel.

:class:`VmisAgent` dials the VM's channel address (any transport of
vmis.transport), runs the resync handshake and HELLO (docs/protocol.md §3),
and returns a :class:`VmisAgentLink`: the channel's requests and
notifications, one to one, plus the control operations (SET_SERVICE, PING,
UPDATE) behind the link's own methods. The link is the channel's handler: it
answers the guest's requests (the host serves none), passes SERVICE_STATE
notifications and the end of the session to the VM's session, and every other
notification straight to the host half that takes it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from vmis.errors import ProtocolError, RemoteProtocolError, RemoteServiceError
from vmis.protocol import (
    FRAMEWORK_VERSIONS,
    ControlOp,
    NotificationReceived,
    Payload,
    Received,
    RequestReceived,
    Role,
    Synced,
    decode_json,
    encode_json,
)
from vmis.protocol.services import CONTROL, parse_version, parse_version_list
from vmis.services.catalog import CATALOG
from vmis.services.host_half import VmRecord
from vmis.services.link import LinkEvents, LinkHello, ServiceOffer
from vmis.transport.address import parse_address
from vmis.transport.channel import Channel
from vmis.transport.dial import dial

__all__ = ["VmisAgent", "VmisAgentLink"]

#: seconds the guest has to answer HELLO
HELLO_TIMEOUT = 10.0


class VmisAgent:
    """Opens links to guests that run the vmis agent (a :class:`~vmis.services.link.GuestKind`)."""

    name = "vmis"

    async def open(self, vm: VmRecord, events: LinkEvents) -> VmisAgentLink:
        link = VmisAgentLink(events, logging.getLogger("vmis.host").getChild(vm.name))
        channel = await dial(parse_address(vm.channel),
                             lambda: Channel(Role.HOST, link, name=vm.name))
        link.channel = channel
        try:
            await channel.sync()
            link.hello = _hello_answer(await channel.hello(_hello_offer(vm, channel),
                                                           timeout=HELLO_TIMEOUT))
        except BaseException:
            channel.close()
            raise
        return link


def _hello_offer(vm: VmRecord, channel: Channel) -> dict[str, Any]:
    return {
        "framework": [list(v) for v in FRAMEWORK_VERSIONS],
        "services": {s.key: [list(v) for v in s.versions] for s in CATALOG},
        "max_payload": channel.conn.max_payload,
        "host": {"name": socket.gethostname(), "vm_name": vm.name, "vm_id": vm.id},
    }


def _hello_answer(answer: Mapping[str, Any]) -> LinkHello:
    """What the guest offers, from its HELLO answer (docs/protocol.md §3.2).

    :raise RemoteProtocolError: When ``services`` or ``agent`` is not an
        object, or a version is malformed.
    """
    services: dict[str, ServiceOffer] = {}
    known = {s.key for s in CATALOG}
    offered, agent = answer.get("services") or {}, answer.get("agent") or {}
    if not isinstance(offered, dict) or not isinstance(agent, dict):
        raise RemoteProtocolError("the guest's HELLO answer has a services or agent member "
                                  "that is not an object")
    for key, entry in offered.items():
        if key not in known or not isinstance(entry, dict):
            continue
        version = entry.get("version")
        offers = entry.get("offers")
        services[key] = ServiceOffer(
            parse_version(version) if version is not None else None,
            str(entry.get("state", "stopped")),
            str(entry.get("startup", "automatic")),
            parse_version_list(offers) if isinstance(offers, list) else [],
        )
    return LinkHello(agent, services)


class VmisAgentLink:
    """One vmis protocol session with a guest agent (a :class:`~vmis.services.link.GuestLink`).

    :param events: the VM's session.
    :param log: the VM's log.
    """

    kind = "vmis"

    def __init__(self, events: LinkEvents, log: logging.Logger) -> None:
        self.events = events
        self.log = log
        # Read once: a notification (a thousand beats a second) costs one look-up.
        self._handlers = events.handlers
        self.hello = LinkHello({}, {})
        self.channel: Channel | None = None

    def _open_channel(self) -> Channel:
        assert self.channel is not None, "the link is used before it opened"
        return self.channel

    # Section: GuestLink

    @property
    def max_payload(self) -> int:
        return self._open_channel().conn.max_payload

    @property
    def peer_max_payload(self) -> int:
        return self._open_channel().conn.peer_max_payload

    @property
    def running(self) -> bool:
        return self._open_channel().running

    @property
    def lost_reason(self) -> str:
        return self._open_channel().lost_reason

    async def request(self, service: int, op: int, payload: Payload = b"",
                      timeout: float | None = 30.0, into: memoryview | None = None) -> Received:
        return await self._open_channel().request(service, op, payload, timeout=timeout,
                                                  into=into)

    def notify(self, service: int, op: int, payload: Payload = b"") -> None:
        self._open_channel().notify(service, op, payload)

    async def set_service(self, key: str, enabled: bool, settings: Mapping[str, Any],
                          timeout: float) -> dict[str, Any]:
        payload = encode_json({"service": key, "enabled": enabled, "settings": dict(settings)})
        offer = self.hello.services.get(key)
        try:
            answer = decode_json(await self._open_channel().request(
                CONTROL, ControlOp.SET_SERVICE, payload, timeout=timeout))
        except RemoteServiceError as exc:
            if exc.code == "service-disabled" and offer is not None:
                offer.state = "stopped"
                offer.startup = "disabled"
            raise
        if offer is not None:
            offer.state = str(answer.get("state", offer.state))
            offer.startup = str(answer.get("startup", offer.startup))
        return answer

    async def ping(self, timeout: float) -> None:
        await self._open_channel().request(CONTROL, ControlOp.PING, b"", timeout=timeout)

    async def install_agent(self, bundle: str, sha256: str, version: str,
                            timeout: float) -> dict[str, Any]:
        return decode_json(await self._open_channel().request(
            CONTROL, ControlOp.UPDATE,
            encode_json({"bundle": bundle, "sha256": sha256, "version": version}),
            timeout=timeout))

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    async def wait_closed(self) -> None:
        await self._open_channel().wait_closed()

    # Section: ChannelHandler (the channel's bottom half)

    def on_synced(self, channel: Channel, event: Synced) -> None:
        pass

    def on_request(self, channel: Channel, request: RequestReceived) -> None:
        channel.fail(request, "unknown-op", "the host serves no guest requests in this version")

    def on_session_lost(self, channel: Channel, reason: str) -> None:
        self.events.lost(reason)

    def on_notification(self, channel: Channel, note: NotificationReceived) -> None:
        handler = self._handlers.get((note.service, note.op))
        if handler is not None:
            handler(note.payload)
        elif note.service == CONTROL and note.op == ControlOp.SERVICE_STATE:
            self._on_service_state(note.payload)

    def _on_service_state(self, payload: bytes) -> None:
        try:
            body = decode_json(payload)
            key = str(body["service"])
        except (ProtocolError, KeyError) as exc:
            self.log.warning("bad SERVICE_STATE: %s", exc)
            return
        offer = self.hello.services.get(key)
        if offer is None:
            return
        offer.state = str(body.get("state", offer.state))
        offer.startup = str(body.get("startup", offer.startup))
        self.events.service_state(key, offer.state, offer.startup)
