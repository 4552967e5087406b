"""Who may call which route: the one table of roles, and how a request names its account.

Every route of the API has a line in :data:`ROLES` (method and path
template: the role it needs, or :data:`PUBLIC`). :func:`check_roles` runs
when the app is built and refuses an app with a route the table does not
name, a line for a route that is gone, or a route that changes state
(any method but GET) that a Reader could call; every request's route is
looked up here (:mod:`vmis.api.guard`), so a new route cannot be
forgotten: it either has a line or the app does not start.

The guard resolves a request's account before routing; the
:func:`vmis.api.guard.authorize` dependency, which every route has, checks
its role once the route is known. A request's account comes from
:func:`resolve_account`, which asks each of :data:`AUTHENTICATORS` in
turn: the Unix socket's caller is the manager's own user (``local:<user>``,
an Administrator: whoever can open the 0600 socket can read the store
anyway), then a token in ``Authorization: Bearer``, then the web console's
session cookie (vmis.api.console.sessions), which stands for a token
(docs/api.md §5).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from vmis.api.console.sessions import signed_in_token
from vmis.errors import AccessDenied, AuthenticationError, InternalError
from vmis.host.accounts import Accounts, Role

__all__ = [
    "AUTHENTICATORS",
    "LOCAL_USER",
    "PUBLIC",
    "ROLES",
    "Account",
    "account_of",
    "app_routes",
    "check_roles",
    "is_public",
    "local_user",
    "on_unix_socket",
    "require",
    "resolve_account",
    "route_keys",
]

READER, OPERATOR, ADMINISTRATOR = Role.READER, Role.OPERATOR, Role.ADMINISTRATOR
#: a route anyone who reaches the API may call: its own description
PUBLIC = None
#: the method under which the table lists a WebSocket route
WEBSOCKET = "WEBSOCKET"

#: (method, path template) -> the role a caller needs; docs/api.md §2 shows it
ROLES: dict[tuple[str, str], Role | None] = {
    # the API's description and its interactive page (vmis.api.docs)
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/assets"): PUBLIC,
    # the web console (vmis.api.console): its page and files hold no data; signing in
    # and out exchanges a token for a session cookie and back (SIGN_IN)
    ("GET", "/"): PUBLIC,
    ("GET", "/console/assets"): PUBLIC,
    ("POST", "/console/session"): PUBLIC,
    ("DELETE", "/console/session"): PUBLIC,
    # the control plane (vmis.api.control): registering VMs is the Administrator's
    ("GET", "/v1/ping"): READER,
    ("GET", "/v1/account"): READER,
    ("GET", "/v1/vms"): READER,
    # the fleet (vmis.host.fleet): this host, every host; moving a VM is registering it
    ("GET", "/v1/host"): READER,
    ("GET", "/v1/hosts"): READER,
    ("POST", "/v1/vms/{name}/move"): ADMINISTRATOR,
    ("POST", "/v1/vms"): ADMINISTRATOR,
    ("PATCH", "/v1/vms/{name}"): ADMINISTRATOR,
    ("DELETE", "/v1/vms/{name}"): ADMINISTRATOR,
    ("POST", "/v1/vms/{name}/reconnect"): OPERATOR,
    ("GET", "/v1/vm-status"): READER,
    ("GET", "/v1/services"): READER,
    ("POST", "/v1/services/enable"): OPERATOR,
    ("POST", "/v1/services/disable"): OPERATOR,
    # the online update puts new code into guests (vmis.api.updates)
    ("POST", "/v1/update"): ADMINISTRATOR,
    # desired-state policy (vmis.api.policy): a policy changes every VM it selects, a
    # tag only changes which policies select a VM, compliance is a read
    ("GET", "/v1/policies"): READER,
    ("PUT", "/v1/policies/{name}"): ADMINISTRATOR,
    ("DELETE", "/v1/policies/{name}"): ADMINISTRATOR,
    ("POST", "/v1/vms/tags"): OPERATOR,
    ("GET", "/v1/compliance"): READER,
    # hypervisor operations (vmis.api.hypervisor): the setup disk is an update's
    ("POST", "/v1/vms/start"): OPERATOR,
    ("POST", "/v1/setup-disk/insert"): ADMINISTRATOR,
    ("POST", "/v1/setup-disk/eject"): ADMINISTRATOR,
    ("POST", "/v1/qemu/vms"): ADMINISTRATOR,
    # libvirt's domains (vmis.api.libvirt): registering them is registering VMs
    ("GET", "/v1/libvirt/connections"): READER,
    ("POST", "/v1/libvirt/vms"): ADMINISTRATOR,
    # what happens and how much (vmis.api.events, vmis.api.metrics)
    ("GET", "/v1/events"): READER,
    ("GET", "/v1/events/recent"): READER,
    ("GET", "/metrics"): READER,
    # the services' faces (vmis.api.services)
    ("POST", "/v1/vms/{name}/copy"): OPERATOR,
    ("GET", "/v1/copies"): READER,
    ("POST", "/v1/vms/{name}/copies/stop"): OPERATOR,
    ("GET", "/v1/kvp"): READER,
    ("GET", "/v1/kvp/limits"): READER,
    ("POST", "/v1/kvp/set"): OPERATOR,
    ("POST", "/v1/kvp/remove"): OPERATOR,
    ("POST", "/v1/power/stop"): OPERATOR,
    ("POST", "/v1/power/restart"): OPERATOR,
    ("GET", "/v1/timesync"): READER,
    ("PATCH", "/v1/timesync"): OPERATOR,
    (WEBSOCKET, "/v1/vms/{name}/exec"): ADMINISTRATOR,
    ("GET", "/v1/vms/{name}/exec"): ADMINISTRATOR,  # without the upgrade: 426
    # a checkpoint with its own snapshot command runs that command on the host:
    # the route asks for Administrator then (vmis.api.services.vss)
    ("POST", "/v1/vms/{name}/checkpoints"): OPERATOR,
    ("GET", "/v1/checkpoints"): READER,
    ("GET", "/v1/vms/{name}/vss"): READER,
    ("PATCH", "/v1/vms/{name}/vss"): ADMINISTRATOR,  # sets a command the host runs
    # accounts and the audit log (vmis.api.accounts): the audit log holds command lines
    ("GET", "/v1/tokens"): ADMINISTRATOR,
    ("POST", "/v1/tokens"): ADMINISTRATOR,
    ("DELETE", "/v1/tokens/{name}"): ADMINISTRATOR,
    ("GET", "/v1/audit"): ADMINISTRATOR,
}

#: the routes that change no state of the manager but who a browser is, so the one
#: exception to "a route that is not a GET needs at least an Operator": a sign-in
#: is made without an account (vmis.api.console.routes)
SIGN_IN = frozenset({("POST", "/console/session"), ("DELETE", "/console/session")})

#: the scope key where the Unix socket's listener names its caller (vmis.api.server)
LOCAL_USER = "vmis.local_user"
#: the scope key of the account the guard resolved
_ACCOUNT = "vmis.account"


@dataclass(frozen=True, slots=True)
class Account:
    """Who made a request."""

    #: ``local:<user>`` on the Unix socket, else the token's name
    name: str
    role: Role
    #: how it was presented: ``socket``, ``token``, ``cookie`` (the web console)
    via: str

    def to_json(self) -> dict[str, Any]:
        return {"Name": self.name, "Role": self.role.label, "Via": self.via}


def local_user() -> str:
    """The audit log's name for the Unix socket's caller: ``local:<the manager's user>``."""
    import pwd

    try:
        return f"local:{pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"local:{os.geteuid()}"


def on_unix_socket(app: ASGIApp, user: str | None = None) -> ASGIApp:
    """*app* as the manager's 0600 Unix socket serves it: every caller is *user*
    (default: :func:`local_user`), an Administrator, without a token."""
    name = user or local_user()

    async def local(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, LOCAL_USER: name}
        await app(scope, receive, send)

    return local


def _socket(conn: HTTPConnection, accounts: Accounts) -> Account | None:
    user = conn.scope.get(LOCAL_USER)
    return Account(user, ADMINISTRATOR, "socket") if isinstance(user, str) else None


def _bearer(conn: HTTPConnection, accounts: Accounts) -> Account | None:
    scheme, _, secret = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = accounts.find(secret.strip())
    if token is None:
        raise AuthenticationError("the API token is not valid: it was removed, or is "
                                  "mistyped ($VMIS_TOKEN)")
    return Account(token.name, token.role, "token")


def _cookie(conn: HTTPConnection, accounts: Accounts) -> Account | None:
    token = signed_in_token(conn, accounts)
    return None if token is None else Account(token.name, token.role, "cookie")


#: the ways a request may say who it is, asked in order: each gives the account,
#: None when the request does not use that way, or raises AuthenticationError
#: when it does with a credential that is not valid
AUTHENTICATORS: list[Callable[[HTTPConnection, Accounts], Account | None]] = [
    _socket, _bearer, _cookie]


def resolve_account(conn: HTTPConnection, accounts: Accounts) -> Account:
    """The account a request (HTTP or WebSocket) comes from.

    :raise AuthenticationError: When it presents no valid credential.
    """
    for authenticate in AUTHENTICATORS:
        account = authenticate(conn, accounts)
        if account is not None:
            return account
    raise AuthenticationError("the host manager's API needs a token over the network: "
                              "set $VMIS_TOKEN (an administrator makes one with "
                              "'vmis token add NAME -Role Reader')")


def account_of(conn: HTTPConnection) -> Account:
    """The account the guard found for this request.

    :raise AuthenticationError: When it found none: a route the guard took for
        public (fail closed).
    """
    account = conn.scope.get(_ACCOUNT)
    if not isinstance(account, Account):
        raise AuthenticationError(f"{conn.url.path} needs an API token")
    return account


def set_account(conn_scope: Scope, account: Account) -> None:
    conn_scope[_ACCOUNT] = account


def require(conn: HTTPConnection, role: Role, what: str) -> None:
    """Refuse unless the caller has *role*: for a route whose arguments ask more of it
    than its line in :data:`ROLES` (a checkpoint's own snapshot command).

    :raise AccessDenied: Naming *what* needs the role.
    """
    account = account_of(conn)
    if account.role < role:
        raise AccessDenied(f"{what} needs the {role.label} role; {account.name} is "
                           f"{_article(account.role)} {account.role.label}")


def _article(role: Role) -> str:
    return "an" if role.label[0] in "AEIOU" else "a"


def refusal(account: Account, role: Role, method: str, path: str) -> AccessDenied:
    """What a caller whose role is too low is told."""
    return AccessDenied(f"{method} {path} needs the {role.label} role; {account.name} is "
                        f"{_article(account.role)} {account.role.label}")


def route_keys(route: Any) -> list[tuple[str, str]]:
    """The lines of :data:`ROLES` a route answers to (HEAD goes with GET)."""
    original = getattr(route, "original_route", route)
    path = str(getattr(route, "path", ""))
    if isinstance(original, WebSocketRoute) or type(original).__name__ == "APIWebSocketRoute":
        return [(WEBSOCKET, path)]
    if isinstance(original, Mount):
        return [("GET", path)]
    methods = getattr(route, "methods", None) or {"GET"}
    return [(m, path) for m in sorted(methods) if m != "HEAD"]


def app_routes(routes: Sequence[BaseRoute]) -> list[Any]:
    """Every route of an app, those of the routers it includes too.

    FastAPI 0.16x keeps an included router as one entry of ``app.routes`` and
    lists what is in it through ``iter_route_contexts``; older versions copy
    its routes into ``app.routes``.
    """
    from fastapi import routing

    contexts = getattr(routing, "iter_route_contexts", None)
    return list(contexts(routes)) if contexts is not None else list(routes)


def check_roles(routes: Sequence[BaseRoute]) -> None:
    """Refuse routes without a line in :data:`ROLES`, lines without a route, and routes
    that change state (any method but GET, any WebSocket) open to a Reader.

    :raise InternalError: Listing every problem (a programming error: the app
        does not start until the table and the routes agree).
    """
    present = {key for route in app_routes(routes) for key in route_keys(route)}
    problems = [f"{m} {p}: no line in vmis.api.access.ROLES" for m, p in sorted(present)
                if (m, p) not in ROLES]
    problems += [f"{m} {p}: a line in ROLES for no route" for m, p in sorted(ROLES)
                 if (m, p) not in present]
    problems += [f"{m} {p}: changes state, so needs at least the Operator role"
                 for (m, p), role in sorted(ROLES.items(), key=lambda i: i[0])
                 if m != "GET" and (m, p) not in SIGN_IN
                 and (role is PUBLIC or role < OPERATOR)]
    # a mounted app (static files, another ASGI app) has no FastAPI dependencies, so
    # authorize never sees it: the guard's "any valid token" is all it can have
    problems += [f"GET {path}: a mounted app can only be public or for Readers"
                 for route in app_routes(routes)
                 if isinstance(getattr(route, "original_route", route), Mount)
                 for path in [str(route.path)]
                 if ROLES.get(("GET", path)) not in (PUBLIC, READER)]
    if problems:
        raise InternalError("the API's routes and its role table disagree: "
                            + "; ".join(problems))


def is_public(path: str) -> bool:
    """Whether a request path is one of the API's description (no account needed)."""
    return any(path == public or path.startswith(public + "/")
               for (_, public), role in ROLES.items() if role is PUBLIC)
