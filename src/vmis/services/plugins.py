"""Find the per-service modules of a layer, in catalogue order.

Each layer keeps one module per service, named by the service's key
(``vmis.cli.host_commands.kvp``, ``vmis.cli.guest_commands.kvp``, ...). A layer asks
for its modules here instead of listing them, so adding a service adds
files, not edits to shared lists; the catalogue (an enum) fixes the order.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vmis.services.catalog import CATALOG

__all__ = ["service_modules"]


def service_modules(template: str) -> list[tuple[str, ModuleType]]:
    """Import ``template.format(key=...)`` for every catalogued service that has one.

    :param template: e.g. ``"vmis.services.{key}.guest"``.
    :return: ``(key, module)`` pairs in catalogue order.
    :raise ImportError: When a module exists but fails to import (a bug, not a
        missing service).
    """
    found = []
    for spec in CATALOG:
        name = template.format(key=spec.key)
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        found.append((spec.key, module))
    return found
