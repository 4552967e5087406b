"""What a route needs of the app: the host manager it serves."""

from __future__ import annotations

from fastapi import Request

from vmis.host.manager import HostManager

__all__ = ["manager_of"]


def manager_of(request: Request) -> HostManager:
    """The HostManager the app was created with."""
    manager: HostManager = request.app.state.manager
    return manager
