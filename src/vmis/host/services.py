"""The host halves of the data-plane services, registered with the manager.

Each service may have a module ``vmis.host.plugins.<key>`` defining:

- ``HOOKS``: ``{(service, op): handler(session, payload)}`` for the guest ->
  host notifications it takes;
- ``setup(manager)``: attaches per-manager state (tables, background work).

The API routes live in ``vmis.api.plugins.<key>`` and the commands in
``vmis.cli.host_commands.<key>``, found the same way.
"""

from __future__ import annotations

from vmis.host.manager import HostManager
from vmis.host.session import NotificationHook
from vmis.services.plugins import service_modules

__all__ = ["notification_hooks", "setup"]

_TEMPLATE = "vmis.host.plugins.{key}"


def notification_hooks() -> dict[tuple[int, int], NotificationHook]:
    """(service, op) -> handler, for every data-plane notification the host takes."""
    hooks: dict[tuple[int, int], NotificationHook] = {}
    for _, module in service_modules(_TEMPLATE):
        hooks.update(getattr(module, "HOOKS", {}))
    return hooks


def setup(manager: HostManager) -> None:
    """Let each service attach its per-manager state."""
    for _, module in service_modules(_TEMPLATE):
        if hasattr(module, "setup"):
            module.setup(manager)
