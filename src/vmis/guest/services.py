"""The guest service halves this agent offers, and the ``--offer`` override.

An older agent simply lacks newer services (docs/updates.md); ``--offer``
makes this agent stand in for one by offering fewer services, or older
versions, without any other change.
"""

from __future__ import annotations

from vmis.errors import ConfigError
from vmis.protocol.services import Version
from vmis.services.catalog import CATALOG
from vmis.services.guest_half import GuestService

__all__ = ["available_services", "parse_offer"]


def available_services() -> list[type[GuestService]]:
    """Every catalogued service's guest half (``vmis.services.<key>.guest.SERVICE``)."""
    services: list[type[GuestService]] = []
    for spec in CATALOG:
        half = spec.half("guest")
        if half is not None:
            services.append(half)
    return services


def parse_offer(
    text: str, available: list[type[GuestService]]
) -> tuple[list[type[GuestService]], dict[str, list[Version]]]:
    """Parse ``key[=MAJOR.MINOR[/MAJOR.MINOR...]],...`` into services and versions.

    :raise ConfigError: For an unknown service key or a malformed version.
    """
    by_key = {t.spec.key: t for t in available}
    services: list[type[GuestService]] = []
    versions: dict[str, list[Version]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, spec = item.partition("=")
        if key not in by_key:
            raise ConfigError(f"--offer: unknown service {key!r}; known: {', '.join(by_key)}")
        services.append(by_key[key])
        if spec:
            try:
                versions[key] = [
                    (int(v.split(".")[0]), int(v.split(".")[1])) for v in spec.split("/")
                ]
            except (ValueError, IndexError):
                raise ConfigError(f"--offer: bad version list {spec!r} for {key}") from None
    return services, versions
