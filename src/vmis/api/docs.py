"""The API's description: ``/openapi.json``, complete, and ``/docs``, which works offline.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN and is blank
without internet; this one loads the copy vendored in
``vmis/api/static/swagger-ui`` (its README says where from). The document
FastAPI builds is completed here with what it cannot see:

- the bearer token (``securitySchemes``) and each operation's role
  (``x-vmis-role``, from :data:`vmis.api.access.ROLES`);
- every error status a route may answer: the error table's
  (vmis.api.errors), 401 and 403, as the one error object vmis sends;
- the WebSocket of Invoke-Command (``GET /v1/vms/{name}/exec`` with
  ``Upgrade: websocket``: 101, and the messages in the description).

The streamed answers (Copy-VMFile ``?stream=true``, the update) declare
their ``application/x-ndjson`` lines where their routes are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from vmis.api.access import PUBLIC, ROLES, SIGN_IN
from vmis.api.errors import STATUS_BY_ERROR

__all__ = ["ASSETS", "ERROR_SCHEMA", "install_docs", "ndjson_response"]

#: the vendored Swagger UI
ASSETS = Path(__file__).parent / "static" / "swagger-ui"

#: what every error answer of vmis is (vmis.api.errors.error_to_json)
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "type"],
    "properties": {
        "error": {"type": "string", "description": "one line for an administrator"},
        "type": {"type": "string", "description": "the class of vmis's error tree "
                                                  "(src/vmis/errors.py)"},
        "code": {"type": ["string", "null"], "description": "a refusal's code"},
    },
    "additionalProperties": True,
}

_REASONS = {400: "Bad request", 401: "No valid API token", 403: "The role does not allow it",
            404: "Not found", 409: "Conflict with the current state", 413: "Too large",
            422: "Invalid fields", 500: "A fault of the host manager",
            502: "The guest, QEMU or a program failed", 503: "The service is unavailable",
            504: "No answer in time"}


def ndjson_response(description: str, *kinds: str) -> dict[int | str, Any]:
    """A route's ``responses=`` for an answer of JSON lines: objects whose ``type`` is
    one of *kinds* (``progress``, ``result``), then ``error`` when the work failed
    (the error object, its class under ``class``)."""
    lines = [{"type": "object", "required": ["type"], "additionalProperties": True,
              "properties": {"type": {"const": kind}}} for kind in kinds]
    lines.append({"type": "object", "required": ["type", "error", "class"],
                  "additionalProperties": True,
                  "properties": {"type": {"const": "error"}, "error": {"type": "string"},
                                 "class": {"type": "string"}}})
    return {200: {"description": description, "content": {
        "application/x-ndjson": {"schema": {"oneOf": lines}}}}}


def text_response(description: str, media_type: str,
                  schema: dict[str, Any] | None = None) -> dict[int | str, Any]:
    """A route's ``responses=`` for an answer in a text format of its own
    (``text/event-stream``, Prometheus' exposition); *schema* is the one of
    its parts (an event's data), a string when not given."""
    return {200: {"description": description,
                  "content": {media_type: {"schema": schema or {"type": "string"}}}}}


def _error_statuses() -> list[int]:
    return sorted({status for _, status in STATUS_BY_ERROR} | {401, 403})


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {"token": {
        "type": "http", "scheme": "bearer",
        "description": "an API token (vmis token add NAME -Role ROLE); not needed on the "
                       "manager's Unix socket"}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            role = ROLES.get((method.upper(), path), PUBLIC)
            if role is PUBLIC:
                operation["security"] = []
                # signing in and out answer errors as every route does (a bad token: 401)
                if (method.upper(), path) not in SIGN_IN:
                    continue
            else:
                operation["security"] = [{"token": []}]
                operation["x-vmis-role"] = role.label
            responses = operation.setdefault("responses", {})
            for status in _error_statuses():
                responses.setdefault(str(status), {"description": _REASONS[status],
                                                   "content": error})
    return document


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` from the vendored files and complete ``/openapi.json``."""
    app.mount("/docs/assets", StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title}: API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            oauth2_redirect_url=None)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _complete(get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
