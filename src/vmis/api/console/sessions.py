"""The web console's sessions: a cookie that stands for an API token, and its CSRF token.

Signing in exchanges a token for a session: a random id in an HttpOnly,
SameSite=Strict cookie (``vmis_session``), and a CSRF token in a cookie the
page's script reads (``vmis_csrf``) and sends back in ``X-VMIS-CSRF`` with
every request that may change state. The manager keeps, per session, the
SHA-256 of the token (never the secret) and looks the token up in the
store on every request (and every few seconds of an open event stream), so
removing the token ends its sessions at once; signing out ends one.
Sessions live in the manager's memory: a restart signs every browser out,
and each manager of a fleet has its own.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from vmis.errors import AccessDenied, AuthenticationError
from vmis.host.accounts import Accounts, TokenInfo, hash_secret

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE", "SESSION_SECONDS", "ConsoleSession",
           "ConsoleSessions", "sessions_of", "signed_in_token"]

SESSION_COOKIE = "vmis_session"
CSRF_COOKIE = "vmis_csrf"
CSRF_HEADER = "x-vmis-csrf"
#: a session ends this long after sign-in, whatever it did (a working day)
SESSION_SECONDS = 12 * 3600
#: methods that change nothing: the only ones a cookie alone may make
_SAFE = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id: str
    token_sha256: str
    csrf: str
    expires: float


class ConsoleSessions:
    """The sessions of one manager's console, by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, ConsoleSession] = {}

    def open(self, secret: str) -> ConsoleSession:
        """A new session for the token *secret* (which the caller has checked)."""
        now = time.monotonic()
        # forget the ended ones here: sign-ins are rare, lookups are not
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
        session = ConsoleSession(secrets.token_urlsafe(32), hash_secret(secret),
                                 secrets.token_urlsafe(32), now + SESSION_SECONDS)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str) -> ConsoleSession | None:
        session = self._by_id.get(session_id)
        if session is None or session.expires <= time.monotonic():
            self._by_id.pop(session_id, None)
            return None
        return session

    def close(self, session_id: str) -> bool:
        return self._by_id.pop(session_id, None) is not None


def sessions_of(conn: HTTPConnection) -> ConsoleSessions:
    sessions: ConsoleSessions = conn.app.state.console_sessions
    return sessions


def same_origin(conn: HTTPConnection) -> bool:
    """Whether the request's ``Origin``, when it has one, is the page's own.

    Browsers send Origin with every POST, PATCH, DELETE and WebSocket; a
    request without it is no other site's page.
    """
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    host = conn.headers.get("host", "")
    return origin.partition("://")[2].rstrip("/") == host


def signed_in_token(conn: HTTPConnection, accounts: Accounts) -> TokenInfo | None:
    """The token a request's session cookie stands for; None without the cookie.

    A request that may change state must also carry the session's CSRF token
    in ``X-VMIS-CSRF`` and come from the page's own origin; a WebSocket
    (which cannot carry the header) only the latter.

    :raise AuthenticationError: For a session that ended (signed out,
        expired, its token removed): sign in again (HTTP 401).
    :raise AccessDenied: For a request that fails the CSRF or origin check:
        the session is good, this request is refused (HTTP 403).
    """
    session_id = conn.cookies.get(SESSION_COOKIE)
    if session_id is None:
        return None
    sessions = sessions_of(conn)
    session = sessions.get(session_id)
    if session is None:
        raise AuthenticationError("the console's session has ended: sign in again")
    websocket = conn.scope["type"] == "websocket"
    if not same_origin(conn):
        raise AccessDenied("the console refuses a request from another site's page")
    if not websocket and conn.scope["method"] not in _SAFE:
        sent = conn.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise AccessDenied(f"the console's request lacks its CSRF token "
                                      f"({CSRF_HEADER.upper()}): reload the page")
    token = accounts.find_digest(session.token_sha256)
    if token is None:  # kept, so every call of the page says why (12 h at most)
        raise AuthenticationError("the console's session has ended: its API token was "
                                  "removed")
    return token
