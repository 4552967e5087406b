"""Interfaces, addresses and default gateways via rtnetlink: moved to
:mod:`vmis.services.kvp.netinfo`, where the vmis KVP service can use it too.

This module keeps the old import path working.
"""

from vmis.services.kvp.netinfo import IfAddress, Interface, NetInfo, NetlinkInfo, StaticNetInfo

__all__ = ["IfAddress", "Interface", "NetInfo", "NetlinkInfo", "StaticNetInfo"]
