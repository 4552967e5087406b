"""The guard every request to the API passes: its account, its role, the audit log.

Two halves, because the route is known only once FastAPI has routed a request:

- :class:`AccessGuard`, an ASGI middleware, resolves the caller's account
  before routing (:func:`vmis.api.access.resolve_account`) and answers 401
  without one (403 for a console request that fails its CSRF or origin
  check), except on the API's own description; when the call ends it
  completes its audit entry with the status and result.
- :func:`authorize`, a dependency of the app and so of every route, HTTP
  and WebSocket alike, looks the route up in :data:`vmis.api.access.ROLES`,
  refuses (403) a caller whose role is too low, and for a call that may
  change state (any method but GET, any WebSocket) writes the audit entry
  before the route runs: when the log cannot be written nothing changes,
  and a call that never ends is in the log too.

A call without a valid token is logged but not written to the store:
anyone who reaches the port can make those, and the store must not be
theirs to fill. A caller with a valid token whose role is refused is in the
audit log, as ``Refused``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmis.api.access import (
    PUBLIC,
    ROLES,
    WEBSOCKET,
    account_of,
    is_public,
    refusal,
    resolve_account,
    route_keys,
    set_account,
)
from vmis.api.errors import error_to_json, status_for
from vmis.errors import AccessDenied, AccessError, NotFoundError, VmisError
from vmis.host.accounts import Accounts, AuditEntry

__all__ = ["AccessGuard", "authorize", "note"]

_log = logging.getLogger("vmis.api")
#: the scope key of the call being audited
_CALL = "vmis.call"
#: how much of an error answer's body the guard keeps for the log's detail
_ERROR_BODY = 16 * 1024


@dataclass(slots=True)
class _Call:
    """The audit log's entry of one call, while it runs."""

    entry: AuditEntry
    row: int
    #: what the route said went wrong inside a stream that had answered 200 already
    failure: str | None = None
    details: list[str] = field(default_factory=list)
    error_body: bytearray = field(default_factory=bytearray)


def note(conn: HTTPConnection, *, detail: str | None = None,
         failure: VmisError | str | None = None) -> None:
    """Add to the audit entry of this call: what it ran (*detail*), or how a stream
    that had started went wrong (*failure*). Nothing for a call that is not audited."""
    call = conn.scope.get(_CALL)
    if not isinstance(call, _Call):
        return
    if detail:
        call.details.append(detail)
    if failure is not None:
        call.failure = str(failure)


def _accounts(conn: HTTPConnection) -> Accounts:
    accounts: Accounts = conn.app.state.accounts
    return accounts


async def authorize(conn: HTTPConnection) -> None:
    """The role check of every route, and the start of a change's audit entry.

    :raise AccessDenied: When the caller's role is below the route's.
    :raise AuthenticationError: When the guard found no account for a route
        that needs one.
    """
    route = conn.scope.get("route")
    websocket = conn.scope["type"] == "websocket"
    method = WEBSOCKET if websocket else conn.scope["method"]
    path = route_keys(route)[0][1] if route is not None else conn.url.path
    key = ("GET" if method == "HEAD" else method, path)
    if key not in ROLES:  # check_roles keeps this from happening; fail closed
        raise AccessDenied(f"no role may {method} {conn.url.path}")
    needed = ROLES[key]
    if needed is PUBLIC:
        return
    account = account_of(conn)
    if method in ("GET", "HEAD"):
        if account.role < needed:
            raise refusal(account, needed, method, conn.url.path)
        return
    client = "unix" if account.via == "socket" or conn.client is None else conn.client.host
    entry = AuditEntry(account=account.name, role=account.role, via=account.via,
                       client=client, method=method, route=path, path=conn.url.path,
                       vms=await _vms(conn, key))
    if account.role < needed:
        exc = refusal(account, needed, method, conn.url.path)
        entry.status, entry.result, entry.detail = 403, "Refused", str(exc)
        _accounts(conn).record(entry)
        raise exc
    entry.result = "Started"
    conn.scope[_CALL] = _Call(entry, _accounts(conn).record(entry))


async def _vms(conn: HTTPConnection, key: tuple[str, str]) -> list[str]:
    """The VMs a call names: in its path, its body's ``vms``, or the body's ``name``
    when it registers one; a wildcard as the VMs it matches now."""
    named: list[str] = []
    if key[1].startswith("/v1/vms/{name}") and isinstance(conn.path_params.get("name"), str):
        named.append(conn.path_params["name"])
    body: Any = None
    if isinstance(conn, Request):
        try:
            body = await conn.json()  # FastAPI has read it already: this is its copy
        except ValueError:
            body = None
    if isinstance(body, dict):
        vms = body.get("vms")
        if isinstance(vms, list):
            named += [v for v in vms if isinstance(v, str)]
        if key[0] == "POST" and key[1].endswith("/vms") and isinstance(body.get("name"), str):
            named.append(body["name"])
    manager = getattr(conn.app.state, "manager", None)
    names: list[str] = []
    for pattern in named:
        if manager is not None and any(c in pattern for c in "*?["):
            try:
                names += [s.vm.name for s in manager.match([pattern])]
                continue
            except NotFoundError:
                pass
        names.append(pattern)
    return list(dict.fromkeys(names))


class AccessGuard:
    """The ASGI middleware: the account before routing, the audit entry's end after."""

    def __init__(self, app: ASGIApp, accounts: Accounts) -> None:
        self.app = app
        self.accounts = accounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            account = resolve_account(HTTPConnection(scope), self.accounts)
        except AccessError as exc:
            client = scope["client"][0] if scope.get("client") else "unix"
            _log.warning("refused %s %s from %s: %s", scope.get("method", "WEBSOCKET"),
                         scope["path"], client, exc)
            await _refuse(scope, send, exc)
            return
        set_account(scope, account)
        status = 0
        error_body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = int(message["status"])
            elif kind == "http.response.body" and status >= 400 \
                    and len(error_body) < _ERROR_BODY:
                error_body.extend(message.get("body", b"")[:_ERROR_BODY])
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close" and not status:
                status = 403
            await send(message)

        failure = None
        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            status, failure = 500, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            call = scope.get(_CALL)
            if isinstance(call, _Call):
                self._finish(call, status, failure, bytes(error_body))

    def _finish(self, call: _Call, status: int, failure: str | None, body: bytes) -> None:
        entry = call.entry
        entry.status = status
        failure = failure or call.failure
        error = failure or (_error_text(body) if status >= 400 else None)
        if status in (401, 403):
            entry.result = "Refused"
        elif status >= 400 or failure is not None or not status:
            entry.result = "Failed"
        else:
            entry.result = "Completed"
        entry.detail = "; ".join([*call.details, *([error] if error else [])]) or None
        try:
            self.accounts.finish(call.row, entry)
        except VmisError as exc:  # the call is done: say so where someone will see it
            _log.error("the audit log did not take the end of %s %s by %s: %s",
                       entry.method, entry.path, entry.account, exc)


def _error_text(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:1000] or None
    if isinstance(answer, dict):
        text = answer.get("error") or answer.get("detail")
        return text if isinstance(text, str) else json.dumps(text)[:1000]
    return None


async def _refuse(scope: Scope, send: Send, exc: AccessError) -> None:
    """Answer 401 or 403 with the error's JSON: on a WebSocket as the answer to its
    handshake where the server can send one, else by closing it (policy violation)."""
    status = status_for(exc)
    body = json.dumps(error_to_json(exc)).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="vmis"'))
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status,
                        "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": str(exc)[:120]})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
