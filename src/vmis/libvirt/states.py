"""libvirt's domain states in Hyper-V's words (Get-VM's State).

libvirt reports a state and a reason (``virDomainGetState``); Hyper-V has one
state. The numbers are libvirt's stable ABI (``virDomainState``,
``virDomainPausedReason``), written out here so the mapping needs no
libvirt-python; tests/libvirt/test_libvirt_units.py checks them against it.
"""

from __future__ import annotations

__all__ = ["CRASHED", "PAUSED", "PMSUSPENDED", "RUNNING", "SHUTOFF", "hyperv_state"]

# virDomainState
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)

# virDomainPausedReason: the ones that are not a plain pause
PAUSED_MIGRATION = 2
PAUSED_SAVE = 3
PAUSED_IOERROR = 5
PAUSED_WATCHDOG = 6
PAUSED_CRASHED = 10
PAUSED_STARTING_UP = 11
PAUSED_POSTCOPY_FAILED = 13
PAUSED_API_ERROR = 14

#: paused because something went wrong: Hyper-V's PausedCritical
_CRITICAL_PAUSES = {PAUSED_IOERROR, PAUSED_WATCHDOG, PAUSED_CRASHED, PAUSED_POSTCOPY_FAILED,
                    PAUSED_API_ERROR}


def hyperv_state(state: int, reason: int, *, managed_save: bool = False) -> str | None:
    """Hyper-V's VM state for libvirt's *state* and *reason*.

    :param managed_save: the domain has a managed save image (``virsh
        managedsave``): off, but starting it resumes where it was, which is
        Hyper-V's Saved.
    :return: ``None`` for libvirt's "no state".
    """
    if state in (RUNNING, BLOCKED):  # blocked: running, waiting on a resource
        return "Running"
    if state == PAUSED:
        if reason == PAUSED_STARTING_UP:
            return "Starting"
        if reason in (PAUSED_SAVE, PAUSED_MIGRATION):
            return "Saving"
        return "PausedCritical" if reason in _CRITICAL_PAUSES else "Paused"
    if state == SHUTDOWN:  # the guest is shutting down
        return "Stopping"
    if state == SHUTOFF:
        return "Saved" if managed_save else "Off"
    if state == CRASHED:  # the guest panicked and libvirt kept it (on_crash preserve)
        return "PausedCritical"
    if state == PMSUSPENDED:  # the guest is in ACPI S3/S4, as QEMU's 'suspended'
        return "Paused"
    return None
