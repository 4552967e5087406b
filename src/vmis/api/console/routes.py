"""The web console's routes: its page, its files, signing in and out (docs/console.md).

The page (``/``) and its files (``/console/assets``) hold no data and need no
account; the script reads everything else from the API with the session
cookie. ``POST /console/session`` exchanges an API token for a session,
``DELETE /console/session`` ends it (vmis.api.console.sessions); both are
audited as the sign-in and sign-out of the token's account.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from vmis.api.console.sessions import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    ConsoleSessions,
    same_origin,
    sessions_of,
    signed_in_token,
)
from vmis.errors import AccessDenied, AuthenticationError
from vmis.host.accounts import Accounts, AuditEntry, TokenInfo

__all__ = ["ASSETS", "install_console"]

#: the page, its style and its scripts
ASSETS = Path(__file__).parent / "assets"

router = APIRouter(prefix="/console", tags=["console"])


class SignIn(BaseModel):
    token: str


def _accounts(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


def _audit(request: Request, token: TokenInfo, method: str, result: str) -> None:
    client = request.client.host if request.client is not None else "unix"
    entry = AuditEntry(account=token.name, role=token.role, via="cookie", client=client,
                       method=method, route="/console/session", path=request.url.path,
                       status=200 if result == "Completed" else 401, result=result)
    _accounts(request).record(entry)


@router.post("/session")
async def sign_in(request: Request, response: Response, body: SignIn) -> dict[str, Any]:
    """Sign the browser in with an API token: a session cookie (HttpOnly,
    SameSite=Strict) and the CSRF token the page sends back."""
    if not same_origin(request):
        raise AccessDenied("the console refuses a sign-in from another site's page")
    token = _accounts(request).find(body.token.strip())
    if token is None:
        raise AuthenticationError("that is not a valid API token (an administrator makes "
                                  "one with 'vmis token add NAME -Role Reader')")
    session = sessions_of(request).open(body.token.strip())
    secure = request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, session.id, max_age=SESSION_SECONDS, path="/",
                        httponly=True, samesite="strict", secure=secure)
    # the page's script reads this one, to send it back in X-VMIS-CSRF
    response.set_cookie(CSRF_COOKIE, session.csrf, max_age=SESSION_SECONDS, path="/",
                        httponly=False, samesite="strict", secure=secure)
    _audit(request, token, "POST", "Completed")
    return {"Name": token.name, "Role": token.role.label}


@router.delete("/session", status_code=204)
async def sign_out(request: Request, response: Response) -> None:
    """End the browser's session (an ended or unknown one is ended already)."""
    try:
        token = signed_in_token(request, _accounts(request))
    except AuthenticationError:
        token = None  # ended already: what is left is to clear the cookies
    session_id = request.cookies.get(SESSION_COOKIE)
    if token is not None and session_id is not None:
        sessions_of(request).close(session_id)
        _audit(request, token, "DELETE", "Completed")
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict",
                               secure=request.url.scheme == "https")


def install_console(app: FastAPI) -> None:
    """Serve the console at ``/`` and let browsers sign in."""
    app.state.console_sessions = ConsoleSessions()
    app.mount("/console/assets", StaticFiles(directory=ASSETS), name="console-assets")
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # no-store: the page is the same for everyone, but an old one must not
        # outlive an upgrade of its scripts
        return FileResponse(ASSETS / "index.html", headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "frame-ancestors 'none'",
            "X-Frame-Options": "DENY"})

