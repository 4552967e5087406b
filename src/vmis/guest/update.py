"""Online update of the guest agent, with rollback (docs/updates.md).

The host copies a new agent bundle into the guest over the Guest Service
Interface (to ``/var/tmp/vmis-update/``) and sends UPDATE (docs/protocol.md
§6). The agent:

1. checks the bundle's SHA-256 and that it runs (``--version`` prints the
   announced version), so a corrupt or truncated bundle never gets installed;
2. installs it (vmis.packaging.install keeps the previous bundle beside it) and
   writes the *pending* marker: ``pending`` holds the number of starts tried
   (read by the launcher, a shell script), ``pending.json`` the details;
3. answers, stops its services, and execs the launcher: the new agent.

The new agent *confirms* the update when it has answered its first HELLO:
the marker is removed and ``result.json`` says ``ok``. If no HELLO comes
within ``update_confirm_timeout`` it rolls back itself and execs the old
agent; if it cannot even start, the launcher rolls back after two failed
starts (systemd restarts a failed agent; the lab's supervisor does too while
an update is pending). Either way ``result.json`` says ``rolledback`` with
the reason, and the host reads it from the next HELLO.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from typing import Any

import vmis
from vmis.errors import ServiceError
from vmis.packaging.bundle import bundle_version
from vmis.packaging.install import install_agent, rollback_agent
from vmis.services.guest_half import GuestContext

__all__ = ["UPDATE_DIR", "UpdateState", "apply_update"]

_log = logging.getLogger("vmis.guest.update")

#: the agent's own update directory: markers, results, the candidate bundle
UPDATE_DIR = "/var/lib/vmis/update"
#: a bundle may be this large (the real one is well under 1 MiB)
MAX_BUNDLE = 64 * 1024 * 1024


class UpdateState:
    """The pending marker and the last result, under ``/var/lib/vmis/update``."""

    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx
        self.dir = ctx.path(UPDATE_DIR)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def pending(self) -> dict[str, Any] | None:
        """Details of an update waiting for confirmation, or None."""
        return self._read("pending.json")

    def result(self) -> dict[str, Any] | None:
        """The outcome of the last update, or None."""
        return self._read("result.json")

    def mark_pending(self, previous: str, version: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "pending.json").write_text(json.dumps(
            {"from": previous, "to": version, "started": time.time()}))
        # The launcher counts starts here; it rolls back after two.
        (self.dir / "pending").write_text("0\n")

    def finish(self, result: str, reason: str = "") -> dict[str, Any]:
        """Record the outcome and remove the pending marker."""
        details = self.pending() or {}
        outcome = {"result": result, "from": details.get("from"), "to": details.get("to"),
                   "running": vmis.__version__, "reason": reason, "time": time.time()}
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "result.json").write_text(json.dumps(outcome))
        for name in ("pending", "pending.json"):
            (self.dir / name).unlink(missing_ok=True)
        return outcome

    def on_start(self) -> None:
        """At agent start: notice a rollback the launcher already made."""
        details = self.pending()
        if details is not None and details.get("to") != vmis.__version__:
            self.finish("rolledback", "the updated agent failed to start")
        elif details is None and (self.dir / "pending").exists():
            (self.dir / "pending").unlink(missing_ok=True)

    def confirm(self) -> None:
        """The updated agent completed a session handshake: keep it."""
        details = self.pending()
        if details is not None and details.get("to") == vmis.__version__:
            outcome = self.finish("ok")
            _log.info("update from %s to %s confirmed", outcome["from"], outcome["to"])

    def rollback(self, reason: str) -> bool:
        """Put the previous agent back; True if there was one (restart to use it)."""
        restored = rollback_agent(self.ctx.root)
        self.finish("rolledback", reason)
        _log.error("update rolled back: %s", reason)
        return restored


def apply_update(ctx: GuestContext, body: dict[str, Any]) -> dict[str, Any]:
    """Check and install a staged bundle (steps 1-2 of the module docstring).

    The staged file is read once; its bytes are verified and then written to
    the agent's own directory (mode 0700) before anything runs them, so the
    staging place (wherever the host could copy to) need not be trusted.

    :param body: ``{"bundle": guest path, "sha256": hex, "version": "x.y.z"}``.
    :raise ServiceError: ``bad-request``, ``not-found``, ``too-large``, ``failed``
        (the bundle does not match or does not run), ``busy`` (frozen).
    """
    if ctx.frozen:
        raise ServiceError("busy", "the guest's filesystems are frozen")
    try:
        guest_path = str(body["bundle"])
        expected = str(body["sha256"]).lower()
        version = str(body["version"])
    except KeyError as exc:
        raise ServiceError("bad-request", f"UPDATE needs {exc}") from None
    if not guest_path.startswith("/"):
        raise ServiceError("bad-request", "the bundle path must be absolute")
    staged = ctx.path(guest_path)
    try:
        with staged.open("rb") as f:
            data = f.read(MAX_BUNDLE + 1)
    except FileNotFoundError:
        raise ServiceError("not-found", f"no staged bundle at {guest_path}") from None
    except OSError as exc:
        raise ServiceError("failed", f"cannot read {guest_path}: {exc.strerror}") from None
    if len(data) > MAX_BUNDLE:
        raise ServiceError("too-large", "the bundle is larger than 64 MiB")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ServiceError("failed", f"bundle checksum mismatch: {actual}, expected {expected}")
    try:
        bundle_version(data)  # checks every member's CRC; the probe run below checks the version
    except ValueError as exc:
        raise ServiceError("failed", str(exc)) from None
    private = ctx.path(UPDATE_DIR)
    private.mkdir(parents=True, exist_ok=True)
    private.chmod(0o700)
    candidate = private / "candidate.pyz"
    candidate.write_bytes(data)
    try:
        probe = subprocess.run([sys.executable, str(candidate), "--version"], capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError("failed", f"the new agent does not run: {exc}") from exc
    finally:
        candidate.unlink(missing_ok=True)
    if probe.returncode != 0 or probe.stdout.strip() != version:
        detail = (probe.stderr.strip().splitlines() or [probe.stdout.strip()])[-1:]
        raise ServiceError("failed", f"the new agent does not run as version {version}: "
                                     f"{' '.join(detail) or 'exit ' + str(probe.returncode)}")
    install_agent(ctx.root, data, version)
    UpdateState(ctx).mark_pending(vmis.__version__, version)
    staged.unlink(missing_ok=True)
    _log.warning("agent %s installed over %s; restarting into it", version, vmis.__version__)
    return {"installed": version, "previous": vmis.__version__}
