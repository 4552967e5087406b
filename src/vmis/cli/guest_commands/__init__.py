"""Guest tools of the data-plane services: one module per service key with COMMANDS.

Listed here by name, in catalogue order (the order of ``vmis-guest --help``),
so the layering test sees every import. Standard library only.
"""

from vmis.cli.guest_commands import fcopy, kvp, timesync, vss
from vmis.psargs import Command

__all__ = ["SERVICE_COMMANDS"]

SERVICE_COMMANDS: tuple[Command, ...] = (
    *fcopy.COMMANDS,
    *kvp.COMMANDS,
    *timesync.COMMANDS,
    *vss.COMMANDS,
)
