"""Host commands of the data-plane services, one module per service key, each with COMMANDS.

Listed here by name, in catalogue order (the order of ``vmis --help``), so the
layering test sees every import: a new service's module is one more line.
"""

from vmis.cli.host_commands import fcopy, kvp, shutdown, timesync, vmsession, vss
from vmis.psargs import Command

__all__ = ["SERVICE_COMMANDS"]

SERVICE_COMMANDS: tuple[Command, ...] = (
    *fcopy.COMMANDS,
    *kvp.COMMANDS,
    *shutdown.COMMANDS,
    *timesync.COMMANDS,
    *vmsession.COMMANDS,
    *vss.COMMANDS,
)
