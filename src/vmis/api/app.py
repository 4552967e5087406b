"""The host manager's HTTP API (FastAPI), served on a Unix socket.

Routes are thin translations of host manager methods (vmis.api.routes lists
every router); errors map to statuses through :mod:`vmis.api.errors`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import vmis
from vmis.api.errors import error_to_json, status_for
from vmis.api.metrics import Metrics
from vmis.api.routes import ROUTERS
from vmis.errors import VmisError
from vmis.host.manager import HostManager

__all__ = ["create_app"]


def create_app(manager: HostManager) -> FastAPI:
    """Build the API around a running manager."""
    app = FastAPI(title="vmis host manager", version=vmis.__version__)
    app.state.manager = manager
    # made with the app: the copy and checkpoint totals count from now on
    app.state.metrics = Metrics(manager)

    @app.exception_handler(VmisError)
    async def vmis_error(request: Request, exc: VmisError) -> JSONResponse:
        return JSONResponse(error_to_json(exc), status_code=status_for(exc))

    for router in ROUTERS:
        app.include_router(router)
    return app
