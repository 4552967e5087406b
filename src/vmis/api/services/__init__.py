"""The API faces of the services: one module per service, each a FastAPI ``router``.

vmis.api.routes registers them; services know no screen (docs/architecture.md).
"""
