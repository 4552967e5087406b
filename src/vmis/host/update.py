"""Update-VMIntegrationServices: push the agent this host ships into running guests.

For each VM, concurrently (docs/updates.md):

1. copy the agent bundle into the guest over the Guest Service Interface
   (enabling it for the update if it is disabled, and disabling it again
   after, so the VM's settings are as before);
2. ask the agent to install it (UPDATE, vmis.guest.update): it checks the
   bundle's SHA-256 and that it runs, installs it keeping the old one, and
   restarts into it;
3. wait for the new agent's session and check its version. An agent that
   cannot start or get a session rolls itself back (launcher or confirm
   timeout); the host then sees the old version come back and reports the
   update as failed, with the guest's reason. The VM keeps working either way.

Progress is reported per VM through a callback (the API streams it).
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vmis
from vmis.errors import (
    BundleError,
    ChannelError,
    LocalFileError,
    RemoteServiceError,
    RequestTimeout,
    ServiceUnavailable,
    VmisError,
)
from vmis.host.manager import HostManager
from vmis.host.session import VmSession
from vmis.packaging.bundle import bundle_bytes, bundle_version
from vmis.services.catalog import by_key
from vmis.services.fcopy.host import FcopyHost

__all__ = ["Bundle", "Progress", "staged_bundle", "update_sessions", "update_vms"]

GSI = by_key("fcopy")
#: where the host stages the bundle in the guest (an fcopy-allowed root)
STAGING_DIR = "/var/tmp/vmis-update"
#: seconds for the new agent to come back (the guest's own rollback takes up
#: to its update_confirm_timeout, 60 s by default)
RESTART_TIMEOUT = 150.0

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Bundle:
    """An agent bundle to install: its bytes, version and SHA-256."""

    data: bytes
    version: str
    sha256: str

    @classmethod
    def current(cls) -> Bundle:
        """The agent of the vmis this host runs."""
        data = bundle_bytes()
        return cls(data, vmis.__version__, hashlib.sha256(data).hexdigest())

    @classmethod
    def from_file(cls, path: Path) -> Bundle:
        """A bundle built elsewhere (``vmis setup-disk build``, a release).

        :raise LocalFileError: When the file cannot be read.
        :raise BundleError: When it is not a vmis agent bundle.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LocalFileError(f"{path}: {exc}") from None
        try:
            version = bundle_version(data)
        except ValueError as exc:
            raise BundleError(f"{path}: {exc}") from None
        return cls(data, version, hashlib.sha256(data).hexdigest())


async def _wait_for_new_agent(session: VmSession, old_boot: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if session.connected and session.agent.get("boot_id") != old_boot:
            return
        await asyncio.sleep(0.1)
    raise RequestTimeout(f"{session.vm.name}: the guest agent did not come back within "
                         f"{timeout:g} s")


async def update_vm(manager: HostManager, session: VmSession, bundle: Bundle, staged: Path,
                    progress: Progress, *, timeout: float = RESTART_TIMEOUT) -> dict[str, Any]:
    """Update one VM (module docstring); never raises for the VM's own failures."""
    name = session.vm.name
    before = session.agent.get("version")
    result: dict[str, Any] = {"VMName": name, "From": before, "To": bundle.version,
                              "Result": "failed", "Error": None}

    def report(stage: str, **extra: Any) -> None:
        progress({"type": "progress", "VMName": name, "Stage": stage, **extra})
        session.publish("update", Stage=stage, **extra)

    enabled_for_update = False
    started = time.monotonic()
    try:
        if session.vm.guest_agent != "vmis":
            raise ServiceUnavailable(
                f"{name} runs {session.vm.guest_agent}, which vmis does not update: update "
                "it with the guest's package manager, or install the vmis agent "
                "(Insert-SetupDisk) and register the VM with -GuestAgent vmis")
        if not session.connected:
            raise ServiceUnavailable(f"{name}: no contact with the guest agent "
                                     f"({session.last_error})")
        if before == bundle.version:
            result.update(Result="current", Version=before, Seconds=0.0)
            report("done", Result="current")
            return result
        if not session.vm.enabled.get(GSI.key, False):
            await manager.set_enabled([name], [GSI.host_name or ""], True,
                                      override_policy=True)
            enabled_for_update = True
        guest_path = f"{STAGING_DIR}/vmis-guest-{bundle.version}.pyz"
        report("copying", Bytes=len(bundle.data))
        await manager.service(FcopyHost).copy_vm_file(name, str(staged), guest_path, "Host",
                                                      create_full_path=True, force=True)
        report("installing")
        old_boot = session.agent.get("boot_id")
        link = session.link
        if link is None:
            raise ServiceUnavailable(f"{name}: the session ended during the copy")
        answer = await link.install_agent(guest_path, bundle.sha256, bundle.version,
                                          timeout=120)
        report("restarting", Installed=answer.get("installed"))
        await _wait_for_new_agent(session, old_boot, timeout)
        now = session.agent.get("version")
        if now == bundle.version:
            result.update(Result="updated")
        else:
            last = session.agent.get("last_update") or {}
            reason = last.get("reason") or "the new agent did not confirm"
            result.update(Result="rolledback", Error=f"{name}: rolled back to {now}: {reason}")
    except RemoteServiceError as exc:
        result["Error"] = f"{name}: the guest refused the update: {exc}"
    except (VmisError, ChannelError) as exc:
        result["Error"] = str(exc)
    finally:
        if enabled_for_update:
            try:
                await manager.set_enabled([name], [GSI.host_name or ""], False,
                                          override_policy=True)
            except VmisError as exc:
                session.log.warning("could not disable the Guest Service Interface again: %s",
                                    exc)
    result["Version"] = session.agent.get("version")
    result["Seconds"] = round(time.monotonic() - started, 3)
    report("done", Result=result["Result"], Error=result["Error"])
    session.log.info("update %s -> %s: %s", before, bundle.version, result["Result"])
    return result


@contextmanager
def staged_bundle(bundle: Bundle) -> Iterator[Path]:
    """The bundle in a file of its own, which the copy into the guest reads."""
    with tempfile.TemporaryDirectory(prefix="vmis-update-") as tmp:
        staged = Path(tmp) / f"vmis-guest-{bundle.version}.pyz"
        staged.write_bytes(bundle.data)
        yield staged


async def update_sessions(manager: HostManager, sessions: Sequence[VmSession], bundle: Bundle,
                          progress: Progress, timeout: float = RESTART_TIMEOUT
                          ) -> list[dict[str, Any]]:
    """Update these VMs concurrently; one result per VM."""
    with staged_bundle(bundle) as staged:
        return list(await asyncio.gather(*(
            update_vm(manager, s, bundle, staged, progress, timeout=timeout) for s in sessions
        )))


async def update_vms(manager: HostManager, patterns: list[str], bundle: Bundle,
                     progress: Progress, timeout: float = RESTART_TIMEOUT) -> list[dict[str, Any]]:
    """Update every matching VM concurrently; one result per VM."""
    return await update_sessions(manager, manager.match(patterns), bundle, progress, timeout)
