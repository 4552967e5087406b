"""Every router of the API: the control plane's, the accounts', the event stream's,
the metrics', the hypervisor operations', the online update's, and each service's face.

A service with an API face has a module in vmis.api.services and one line
here (docs/architecture.md, "Add a screen"), and each of its routes a line in
vmis.api.access.ROLES: the role it needs.
"""

from __future__ import annotations

from fastapi import APIRouter

from vmis.api import (
    accounts,
    control,
    events,
    hypervisor,
    libvirt,
    metrics,
    policy,
    updates,
)
from vmis.api.services import fcopy, kvp, shutdown, timesync, vmsession, vss

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    control.router,
    accounts.router,
    events.router,
    metrics.router,
    updates.router,
    policy.router,
    # each service's face, in catalogue order
    fcopy.router,
    kvp.router,
    shutdown.router,
    timesync.router,
    vmsession.router,
    vss.router,
    hypervisor.router,
    libvirt.router,
)
