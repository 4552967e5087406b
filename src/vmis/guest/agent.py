"""The guest agent: services, the host channel, and the local control socket.

:class:`Agent` is the :class:`~vmis.transport.channel.ChannelHandler` of the
guest's channels. It answers the control service itself (HELLO, SET_SERVICE,
PING, docs/protocol.md §6) and hands every other request to the service it
is for, which must be running (else ``service-stopped``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import vmis
from vmis.errors import RemoteProtocolError, ServiceError, VmisError
from vmis.guest.config import AgentConfig
from vmis.guest.control import ControlServer
from vmis.guest.manager import ServiceManager
from vmis.guest.state import ServiceState
from vmis.guest.update import UpdateState, apply_update
from vmis.protocol import (
    CONTROL,
    FRAMEWORK_VERSIONS,
    ControlOp,
    NotificationReceived,
    RequestReceived,
    Role,
    ServiceId,
    Synced,
    Version,
    decode_json,
    encode_json,
    negotiate,
)
from vmis.protocol.services import parse_version_list
from vmis.services.catalog import ServiceSpec, by_id, by_key
from vmis.services.guest_half import GuestContext, GuestService
from vmis.transport.address import UnixAddress, parse_address
from vmis.transport.channel import Channel
from vmis.transport.listen import serve

__all__ = ["RESTART_SETTINGS", "Agent"]

_log = logging.getLogger("vmis.guest")

#: settings used once, when the agent starts: a reload leaves them to the next start
RESTART_SETTINGS = ("channel", "control_socket", "state_dir", "max_payload", "adapters",
                    "pool_dir")



def system_uptime(proc: Path = Path("/proc")) -> float | None:
    """Seconds since this system's init (PID 1) started, or None where /proc cannot tell.

    Not /proc/uptime alone: in a process lab VM (its own PID namespace and
    /proc) that is the host's; PID 1 is the VM's init either way, and in a
    real guest it starts within a second of the kernel.
    """
    try:
        uptime = float((proc / "uptime").read_text().split()[0])
        # field 22, starttime, in clock ticks since boot; the name in field 2 may hold spaces
        fields = (proc / "1/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return round(max(0.0, uptime - started), 3)

class Agent:
    """The guest agent.

    :param config: loaded configuration.
    :param root: directory all guest paths resolve in (``/`` in a real guest).
    :param service_types: the guest service classes this agent offers.
    :param adapters: real-effect adapters by name, given to every service.
    :param versions: per-service version override (key -> versions), used to
        stand in for an older agent.
    """

    def __init__(
        self,
        config: AgentConfig,
        root: Path,
        service_types: Sequence[type[GuestService]],
        adapters: Mapping[str, Any] | None = None,
        versions: Mapping[str, Sequence[Version]] | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.ctx = GuestContext(root=root, config=config, notify=self.notify,
                                adapters=dict(adapters or {}))
        state = ServiceState(self.ctx.path(config.state_dir) / "services.json", config.startup)
        self.ctx.freeze_listeners.append(state.set_hold)
        services = {t.spec.key: t(self.ctx) for t in service_types}
        self.manager = ServiceManager(services, state, self._guest_changed)
        self.versions: dict[str, Sequence[Version]] = {
            key: (versions or {}).get(key, s.spec.versions) for key, s in services.items()
        }
        #: the channel whose session is running, if any
        self.channel: Channel | None = None
        self.boot_id = uuid.uuid4().hex
        #: set when run() returned to be replaced by a new agent (update, reboot)
        self.restart_requested = False
        #: who the host is, from the running session's HELLO: name, vm_name, vm_id
        self.host_info: dict[str, Any] = {}
        self.updates = UpdateState(self.ctx)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()

    # Section: running

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`shutdown` is called or the task is cancelled."""
        # First of all: a previous agent may have died with the guest frozen,
        # and anything this one writes would wait for the thaw.
        for service in self.manager.services.values():
            service.recover()
        self.updates.on_start()
        if self.updates.pending() is not None:
            self._spawn(self._confirm_or_roll_back())
        address = parse_address(self.config.channel)
        if isinstance(address, UnixAddress):
            address = UnixAddress(str(self.ctx.path(address.path)))
        control = ControlServer(self, self.ctx.path(self.config.control_socket))
        await control.start()
        try:
            await self.manager.start_at_boot()
            server = asyncio.ensure_future(serve(address, self._new_channel))
            stopper = asyncio.ensure_future(self._stopping.wait())
            _log.info("agent %s listening on %s", vmis.__version__, address)
            if ready is not None:
                ready()
            done, _ = await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (server, stopper):
                task.cancel()
            if server in done and not server.cancelled() and server.exception():
                raise server.exception()  # type: ignore[misc]
        finally:
            await control.close()
            if self.channel is not None:
                self.channel.close()
            await self.manager.stop_all()
            self.manager.state.flush()

    def reconfigure(self, config: AgentConfig) -> list[str]:
        """Use a reloaded configuration (``vmis-guest run`` on SIGHUP).

        The services read their settings when they use them, so those apply
        from now on ([vmsession], [shutdown], [timesync], [vss], [heartbeat]);
        what was set up at start (the channel, the control socket, the state and
        pool directories, [fcopy]'s roots until the service starts again) keeps
        its old value until the agent restarts.

        :return: the settings that wait for a restart.
        """
        waiting = [name for name in RESTART_SETTINGS
                   if getattr(config, name) != getattr(self.config, name)]
        self.config = config
        self.ctx.config = config
        if waiting:
            _log.warning("configuration reloaded; %s apply when the agent restarts",
                         ", ".join(waiting))
        else:
            _log.info("configuration reloaded")
        return waiting

    def shutdown(self, restart: bool = False) -> None:
        """Ask :meth:`run` to return (SIGTERM); with *restart*, to be replaced."""
        self.restart_requested = self.restart_requested or restart
        self._stopping.set()

    async def _confirm_or_roll_back(self) -> None:
        # vmis.guest.update: an updated agent that gets no HELLO in time goes back.
        await asyncio.sleep(self.config.update_confirm_timeout)
        if self.updates.pending() is not None:
            self.updates.rollback(
                f"no host session within {self.config.update_confirm_timeout:g} s")
            self.shutdown(restart=True)

    def _new_channel(self) -> Channel:
        return Channel(Role.GUEST, self, max_payload=self.config.max_payload)

    def notify(self, service: int, op: int, payload: bytes) -> None:
        """Send a notification over the running session, if there is one."""
        if self.channel is not None and self.channel.running:
            self.channel.notify(service, op, payload)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Section: ChannelHandler

    def on_synced(self, channel: Channel, event: Synced) -> None:
        _log.info("host session starting%s", " (replacing the old one)" if event.replaced else "")
        if self.channel is not None and self.channel is not channel:
            # One host per guest: a new connection supersedes the old one.
            self.channel.close()
        self.channel = channel
        self._session_changed(False)

    def on_session_lost(self, channel: Channel, reason: str) -> None:
        if channel is self.channel:
            _log.info("host session ended: %s", reason)
            self._session_changed(False)

    def _session_changed(self, running: bool) -> None:
        for service in self.manager.services.values():
            service.on_session(running)

    def on_notification(self, channel: Channel, note: NotificationReceived) -> None:
        spec = by_id(note.service)
        service = self.manager.services.get(spec.key) if spec else None
        handler = service.notification_handlers.get(note.op) if service else None
        if handler is None or service is None or not service.running:
            _log.debug("ignored notification %d/%d", note.service, note.op)
            return
        try:
            handler(note.payload)
        except (RemoteProtocolError, ServiceError, ValueError, KeyError) as exc:
            _log.warning("bad %s notification: %s", service.spec.key, exc)

    def on_request(self, channel: Channel, request: RequestReceived) -> None:
        if request.service == CONTROL:
            self._spawn(self._answer(channel, request, self._control))
            return
        spec = by_id(request.service)
        service = self.manager.services.get(spec.key) if spec else None
        if service is None or spec is None:
            channel.fail(request, "unknown-service", f"this agent has no service {request.service}")
            return
        if not service.running:
            code = "service-disabled" if self.manager.state.startup[spec.guest_name].value == \
                "disabled" else "service-stopped"
            channel.fail(request, code, f"{spec.guest_name} is not running in the guest")
            return
        handler = service.handlers.get(request.op)
        if handler is None:
            channel.fail(request, "unknown-op", f"{spec.key} has no operation {request.op}")
            return
        self._spawn(self._answer(channel, request, handler))

    async def _answer(
        self, channel: Channel, request: RequestReceived, handler: Callable[[RequestReceived], Any]
    ) -> None:
        # docs/protocol.md §5.2: every request gets an answer.
        try:
            payload = await handler(request)
        except ServiceError as exc:
            channel.fail(request, exc.code, str(exc))
        except RemoteProtocolError as exc:
            channel.fail(request, "bad-request", str(exc))
        except VmisError as exc:
            channel.fail(request, "failed", str(exc))
        except asyncio.CancelledError:
            channel.fail(request, "failed", "the agent is stopping")
            raise
        except Exception as exc:
            _log.exception("request %d/%d failed", request.service, request.op)
            channel.fail(request, "failed", f"internal error: {exc}")
        else:
            channel.respond(request, payload)

    # Section: control service (docs/protocol.md §6)

    async def _control(self, request: RequestReceived) -> bytes:
        if request.op == ControlOp.HELLO:
            return self._hello(request)
        if request.op == ControlOp.SET_SERVICE:
            body = decode_json(request.payload)
            try:
                spec = by_key(str(body["service"]))
            except KeyError:
                raise ServiceError("unknown-service", f"no service {body.get('service')!r}") \
                    from None
            if not self.manager.has(spec):
                raise ServiceError("unknown-service", f"this agent has no {spec.guest_name}")
            settings = body.get("settings") or {}
            if not isinstance(settings, dict):
                raise ServiceError("bad-request", "settings must be an object")
            enabled = body.get("enabled")
            if not isinstance(enabled, bool):
                raise ServiceError("bad-request", "enabled must be true or false")
            status = await self.manager.set_host_enabled(spec, enabled, settings)
            return encode_json(status)
        if request.op == ControlOp.PING:
            return b""
        if request.op == ControlOp.UPDATE:
            # Hashing and test-running the bundle take a moment: not on the loop.
            result = await asyncio.to_thread(apply_update, self.ctx, decode_json(request.payload))
            # Answer first, then stop in order and exec the launcher.
            asyncio.get_running_loop().call_later(0.2, self.shutdown, True)
            return encode_json(result)
        raise ServiceError("unknown-op", f"control has no operation {request.op}")

    def _hello(self, request: RequestReceived) -> bytes:
        body = decode_json(request.payload)
        offered = body.get("services") or {}
        if not isinstance(offered, dict):
            raise RemoteProtocolError("HELLO services must be an object")
        result = negotiate(
            parse_version_list(body.get("framework")),
            {str(k): parse_version_list(v) for k, v in offered.items()},
            FRAMEWORK_VERSIONS,
            self.versions,
        )
        if result is None:
            raise ServiceError("protocol-mismatch", "no common framework version")
        host = body.get("host")
        self.host_info = dict(host) if isinstance(host, dict) else {}
        peer_max = body.get("max_payload")
        channel = self.channel
        if channel is not None and isinstance(peer_max, int) and peer_max >= 64 * 1024:
            channel.conn.peer_max_payload = peer_max
        services = {}
        for key, version in result.services.items():
            entry: dict[str, Any] = {"version": list(version) if version else None}
            if version is None:
                # docs/protocol.md §3.2: say what we do speak, so the host can
                # tell its administrator which side is out of date
                entry["offers"] = [list(v) for v in self.versions[key]]
            entry.update(self.manager.status(by_key(key)))
            services[key] = entry
        answer = {
            "framework": list(result.framework),
            "services": services,
            "max_payload": self.config.max_payload,
            "agent": {
                "version": vmis.__version__,
                "os": platform.system(),
                "hostname": socket.gethostname(),
                "boot_id": self.boot_id,
                "uptime": system_uptime(),
                "last_update": self.updates.result(),
            },
        }
        asyncio.get_running_loop().call_soon(self._session_changed, True)
        asyncio.get_running_loop().call_soon(self.updates.confirm)
        return encode_json(answer)

    def _guest_changed(self, spec: ServiceSpec) -> None:
        status = self.manager.status(spec)
        self.notify(
            ServiceId.CONTROL,
            ControlOp.SERVICE_STATE,
            encode_json({"service": spec.key, **status, "reason": "guest"}),
        )
