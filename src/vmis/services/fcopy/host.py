"""Host half of the Guest Service Interface: Copy-VMFile on a VM's session.

The host manager does every copy (it holds the link); the API and the CLI
only start it and show its progress (docs/services/fcopy.md §7). The copy
itself is :class:`~vmis.services.fcopy.engine.CopyEngine`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmis.errors import ConfigError
from vmis.protocol import Payload
from vmis.services.catalog import by_key
from vmis.services.fcopy import FcopyOp
from vmis.services.fcopy.engine import CopyEngine
from vmis.services.fcopy.file_copier import CopyProgress
from vmis.services.host_half import HostService, VmContext, VmPart

__all__ = ["SERVICE", "SPEC", "FcopyHost"]

SPEC = by_key("fcopy")
FILE_SOURCES = ("Host", "Guest")


def _normal(path: str) -> str:
    """A host path without ``.`` and ``..`` components, a trailing "/" kept."""
    normal = os.path.normpath(path)
    return normal + "/" if path.endswith("/") and normal != "/" else normal


class FcopyHost(HostService[VmPart]):
    """The Guest Service Interface on the host: Copy-VMFile both ways."""

    spec = SPEC
    needs = frozenset(FcopyOp)

    def new_part(self, vm: VmContext) -> VmPart:
        return VmPart(vm)

    def prepare_copy(self, vm: str, source: str, destination: str,
                     file_source: str) -> VmContext:
        """Check what can be checked before a copy starts; return the VM's session.

        :raise NotFoundError: For an unknown VM.
        :raise ServiceUnavailable: When the Guest Service Interface cannot answer.
        :raise ConfigError: For a relative path or an unknown -FileSource.
        """
        if file_source not in FILE_SOURCES:
            raise ConfigError(f"-FileSource must be Host or Guest, not {file_source!r}")
        host_path, guest_path = (source, destination) if file_source == "Host" else \
            (destination, source)
        if not os.path.isabs(host_path):
            raise ConfigError(f"the host path must be absolute: {host_path!r}")
        if not guest_path.startswith("/"):
            raise ConfigError(f"the guest path must be absolute: {guest_path!r}")
        session = self.host.session(vm)
        session.require(SPEC)
        return session

    async def copy_vm_file(self, vm: str, source: str, destination: str, file_source: str, *,
                           create_full_path: bool = False, force: bool = False,
                           recurse: bool = False,
                           progress: Callable[[CopyProgress], None] | None = None
                           ) -> dict[str, Any]:
        """Copy-VMFile: copy a file or, with *recurse*, a tree between host and guest.

        :param file_source: ``Host`` (host to guest, Hyper-V's only direction) or
            ``Guest`` (guest to host).
        :return: the result of docs/services/fcopy.md §7, with ``VMName``.
        :raise VmisError: Why the copy could not be made.
        """
        session = self.prepare_copy(vm, source, destination, file_source)
        if file_source == "Host":
            source = _normal(source)
        else:
            destination = _normal(destination)
        link = session.link
        assert link is not None

        def request(op: int, payload: Payload, timeout: float | None) -> Any:
            return session.request(SPEC, op, payload, timeout=timeout)

        engine = CopyEngine(request, peer_max_payload=link.peer_max_payload,
                            own_max_payload=link.max_payload, progress=progress)
        if file_source == "Host":
            result = await engine.to_guest(Path(source), destination,
                                           create_full_path=create_full_path, force=force,
                                           recurse=recurse)
        else:
            result = await engine.from_guest(source, destination,
                                             create_full_path=create_full_path, force=force,
                                             recurse=recurse)
        session.log.info("Copy-VMFile %s %s -> %s: %d files, %d bytes (%d sent) in %.3f s",
                         file_source, source, result["Destination"], result["Files"],
                         result["Bytes"], result["BytesSent"], result["Seconds"])
        return {"VMName": session.vm.name, **result}


SERVICE = FcopyHost
