"""What the advisor answers: the mechanism for a host and guest pair, how supported, and why.

Every answer names its :class:`Source`: a row of one of the article's
tables, or vmis's own answer for vmis hosts and guests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Advice", "Source", "Support"]


class Support(StrEnum):
    """How supported a guest is on a host, in the article's words."""

    SUPPORTED = "Supported"
    #: "Extended support only in Windows Server 2016"
    EXTENDED_SUPPORT_ONLY = "Extended support only"
    #: "Not under mainstream support"
    NO_MAINSTREAM_SUPPORT = "Not under mainstream support"
    #: "Will not be supported in Windows Server 2016", or no vmis agent
    NOT_SUPPORTED = "Not supported"
    #: the host's table has no row for this guest
    NOT_LISTED = "Not listed"


@dataclass(frozen=True, slots=True)
class Source:
    """Where an answer comes from: a table row of the article, or vmis itself."""

    #: "article" or "vmis"
    origin: str
    #: the citation, for people
    text: str
    #: table number (1-3) in the article, None for vmis answers
    table: int | None = None
    #: data row number in that table (separator rows not counted), None if not listed
    row: int | None = None


@dataclass(frozen=True, slots=True)
class Advice:
    """The answer for one host/guest pair."""

    #: the host as asked (canonical name), or the table's host group in listings
    host_os: str
    #: the host group whose table answers ("Windows 8.1/Windows Server 2012 R2")
    host_group: str
    #: the guest as the answering row prints it
    guest_os: str
    mechanism: str
    support: Support
    #: the row's Notes cell
    note: str
    #: the note, then every footnote and instruction it refers to, written out
    notes: tuple[str, ...]
    #: integration services the mechanism needs
    requires: tuple[str, ...]
    #: what to use where a requirement cannot be met
    fallback: str | None
    source: Source

    def to_json(self) -> dict[str, Any]:
        """The answer as ``--json`` prints it (PowerShell property names)."""
        return {
            "HostOS": self.host_os,
            "HostGroup": self.host_group,
            "GuestOS": self.guest_os,
            "Mechanism": self.mechanism,
            "Requires": list(self.requires),
            "Fallback": self.fallback,
            "Support": str(self.support),
            "Note": self.note,
            "Notes": list(self.notes),
            "Source": {"Origin": self.source.origin, "Table": self.source.table,
                       "Row": self.source.row, "Text": self.source.text},
        }
