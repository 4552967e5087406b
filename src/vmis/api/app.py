"""The host manager's HTTP API (FastAPI), served on a Unix socket and, when asked, on TCP.

Routes are thin translations of host manager methods (vmis.api.routes lists
every router); errors map to statuses through :mod:`vmis.api.errors`. Every
request passes the guard (:mod:`vmis.api.guard`): its route's role in
:data:`vmis.api.access.ROLES`, the caller's account, the audit log.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

import vmis
from vmis.api.access import app_routes, check_roles
from vmis.api.console.routes import install_console
from vmis.api.docs import install_docs
from vmis.api.errors import error_to_json, status_for
from vmis.api.guard import AccessGuard, authorize
from vmis.api.metrics import Metrics
from vmis.api.routes import ROUTERS
from vmis.errors import ConfigError, ManagerApiError, NotFoundError, UsageError, VmisError
from vmis.host.accounts import Accounts
from vmis.host.manager import HostManager

__all__ = ["create_app"]

#: the error class of Starlette's and FastAPI's own refusals, by status
_HTTP_ERRORS: dict[int, type[VmisError]] = {400: ConfigError, 404: NotFoundError,
                                            405: UsageError, 413: ConfigError}


def _methods_of(app: FastAPI, path: str) -> list[str]:
    """The methods of *path*, a 405's ``Allow``: those of every route of its most
    literal template (``/v1/timesync``: GET and PATCH; ``/v1/vms/start``: POST, not
    ``/v1/vms/{name}``'s), where Starlette names only the first route's."""
    found: dict[int, set[str]] = {}
    for route in app_routes(app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            params = str(getattr(route, "path", "")).count("{")
            found.setdefault(params, set()).update(getattr(route, "methods", None) or ())
    return sorted(found[min(found)]) if found else []

DESCRIPTION = """The API of a vmis host manager (docs/api.md). On the manager's Unix socket it
needs no token; over TCP every call but this description needs `Authorization: Bearer TOKEN`,
and each operation names the role it needs (`x-vmis-role`: Reader, Operator, Administrator)."""


def create_app(manager: HostManager) -> FastAPI:
    """Build the API around a running manager.

    :raise InternalError: When a route has no line in the role table (vmis.api.access).
    """
    accounts = Accounts(manager.engine)
    # authorize: every route's role check, HTTP and WebSocket alike (vmis.api.guard)
    app = FastAPI(title="vmis host manager", version=vmis.__version__,
                  description=DESCRIPTION, docs_url=None, redoc_url=None,
                  dependencies=[Depends(authorize)])
    app.state.manager = manager
    app.state.accounts = accounts
    # made with the app: the copy and checkpoint totals count from now on
    app.state.metrics = Metrics(manager)

    @app.exception_handler(VmisError)
    async def vmis_error(conn: HTTPConnection, exc: VmisError) -> JSONResponse:
        # on a WebSocket, Starlette sends it as the answer to the handshake
        return JSONResponse(error_to_json(exc), status_code=status_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(conn: HTTPConnection, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's and FastAPI's own refusals (no such path, a body that is not
        # JSON, a method the path does not take) in vmis's one error shape
        cls = _HTTP_ERRORS.get(exc.status_code, ManagerApiError)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_methods_of(app, conn.url.path))
        return JSONResponse(error_to_json(cls(str(exc.detail))), status_code=exc.status_code,
                            headers=headers)

    for router in ROUTERS:
        app.include_router(router)
    install_docs(app)
    install_console(app)
    check_roles(app.routes)
    app.add_middleware(AccessGuard, accounts=accounts)
    return app
