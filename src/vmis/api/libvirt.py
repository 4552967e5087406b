"""API of the libvirt backend's discovery: registering libvirt domains by name or wildcard.

``GET  /v1/libvirt/connections``  the libvirt URIs this manager drives (``host serve -Hypervisor``)
``POST /v1/libvirt/vms``          ``vm add -Libvirt DOMAIN``: register domains through libvirt's API

A domain is registered with its agent channel (read off its XML through the
connection), its connection URI and UUID, so the libvirt backend drives it.
A wildcard registers every matching domain that has an agent channel and is
not registered yet, and says why it skipped the others; a name without
wildcards that cannot be registered is an error.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from vmis.api.context import manager_of
from vmis.errors import ConfigError, NotFoundError, StateError
from vmis.host.manager import HostManager
from vmis.libvirt.hypervisor import FoundDomain, LibvirtHypervisor

__all__ = ["router"]

router = APIRouter(prefix="/v1/libvirt")


class DomainsIn(BaseModel):
    #: domain names; wildcards allowed
    domains: list[str] = Field(min_length=1)
    #: the VM's name, if not the domain's (one domain only)
    name: str | None = None
    #: the connection to look in (default: every one of the manager's)
    uri: str | None = None
    heartbeat_interval_ms: int | None = Field(default=None, ge=100, le=600_000)


def _backends(manager: HostManager, uri: str | None) -> list[LibvirtHypervisor]:
    backends = [h for h in manager.hypervisors if isinstance(h, LibvirtHypervisor)]
    if not backends:
        raise StateError("this host manager has no libvirt connection "
                         "(vmis host serve -Hypervisor qemu:///system)")
    if uri is None:
        return backends
    chosen = [b for b in backends if b.uri == uri]
    if not chosen:
        raise NotFoundError(f"this host manager has no libvirt connection {uri} (it has "
                            f"{', '.join(b.uri for b in backends)})")
    return chosen


def _explicit(pattern: str) -> bool:
    return not any(c in pattern for c in "*?[")


@router.get("/connections")
async def connections(request: Request) -> list[dict[str, Any]]:
    manager = manager_of(request)
    return [{"Uri": h.uri} for h in manager.hypervisors if isinstance(h, LibvirtHypervisor)]


@router.post("/vms", status_code=201)
async def add_domains(request: Request, body: DomainsIn) -> list[dict[str, Any]]:
    """Register the matching domains; one row per domain found, ``Registered`` or a ``Note``."""
    manager = manager_of(request)
    found: list[FoundDomain] = []
    for backend in _backends(manager, body.uri):
        found += await backend.domains(body.domains)
    for pattern in filter(_explicit, body.domains):
        hits = [d for d in found if d.name.lower() == pattern.lower()]
        where = body.uri or ", ".join(b.uri for b in _backends(manager, None))
        if not hits:
            raise NotFoundError(f"no libvirt domain named {pattern!r} at {where}")
        if len(hits) > 1:
            raise ConfigError(f"domain {pattern!r} is at {', '.join(d.uri for d in hits)}; "
                              "choose one with -LibvirtUri")
        if hits[0].channel is None:
            raise NotFoundError(f"no vmis agent channel (virtio-serial port org.vmis.agent.0 "
                                f"on a Unix socket) in libvirt domain {pattern}: {hits[0].why}")
    if body.name is not None and len(found) != 1:
        raise ConfigError(f"-Name names one VM, but {len(found)} domains match")
    named = {p.lower() for p in body.domains if _explicit(p)}
    known = {(s.vm.libvirt_uri, s.vm.libvirt_domain): s.vm.name
             for s in manager.sessions.values()}
    rows = []
    for domain in found:
        row = {"Domain": domain.name, "LibvirtUri": domain.uri, "LibvirtDomain": domain.uuid,
               "Active": domain.active, "Registered": False, "Note": None}
        if (domain.uri, domain.uuid) in known:
            row["Note"] = f"already registered as {known[domain.uri, domain.uuid]}"
        elif domain.channel is None:
            row["Note"] = f"no vmis agent channel: {domain.why}"
        else:
            try:
                record = manager.add_vm(body.name or domain.name, f"unix:{domain.channel}",
                                        kind="libvirt", libvirt_uri=domain.uri,
                                        libvirt_domain=domain.uuid,
                                        heartbeat_interval_ms=body.heartbeat_interval_ms)
            except (ConfigError, StateError) as exc:  # a name vmis refuses, or one taken
                if domain.name.lower() in named:
                    raise
                row["Note"] = str(exc)
            else:
                row = {**manager.vm_info(manager.sessions[record.id]), **row, "Registered": True}
        rows.append(row)
    return rows
