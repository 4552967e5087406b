"""API routers of the data-plane services: ``vmis.api.plugins.<key>.router``."""

from __future__ import annotations

from fastapi import APIRouter

from vmis.services.plugins import service_modules

__all__ = ["api_routers"]


def api_routers() -> list[APIRouter]:
    """Every data-plane service's router, in catalogue order."""
    return [module.router for _, module in service_modules("vmis.api.plugins.{key}")]
