"""API routers of the data-plane services, one module per service key (see vmis.api.routes)."""
