"""Codes of the Hyper-V integration-service protocols, as the Linux kernel spells them.

Every value here comes from ``include/uapi/linux/hyperv.h`` and
``include/linux/hyperv.h`` (facts sections 1, 3, 5, 6); the tests compare each
one with the facts file.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "FCOPY_CURRENT_VERSION",
    "FCOPY_VERSION_0",
    "FCOPY_VERSION_1",
    "HV_DRV_VERSION",
    "HV_UTIL_TIMEOUT",
    "VSS_FREEZE_TIMEOUT",
    "VSS_HBU_NO_AUTO_RECOVERY",
    "AddrFamily",
    "FcopyFlag",
    "FcopyOp",
    "HResult",
    "IcFlag",
    "IcMsgType",
    "KvpOp",
    "RegType",
    "VssOp",
]


class HResult(IntEnum):
    """Status codes written into the ``icmsg_hdr.status`` / message ``error`` field."""

    #: success
    HV_S_OK = 0x00000000
    #: generic failure, timeout, daemon absent
    HV_E_FAIL = 0x80004005
    #: KVP: key not found / no more items (ends the host's enumeration)
    HV_S_CONT = 0x80070103
    #: operation not supported
    HV_ERROR_NOT_SUPPORTED = 0x80070032
    #: machine locked
    HV_ERROR_MACHINE_LOCKED = 0x800704F7
    #: device not connected
    HV_ERROR_DEVICE_NOT_CONNECTED = 0x8007048F
    #: KVP SET_IP_INFO: an address string is invalid
    HV_INVALIDARG = 0x80070057
    #: KVP SET_IP_INFO: the adapter GUID maps to no interface
    HV_GUID_NOTFOUND = 0x80041002
    #: FCOPY: the target exists and OVER_WRITE was not given
    HV_ERROR_ALREADY_EXISTS = 0x80070050
    #: FCOPY: a write ran out of space
    HV_ERROR_DISK_FULL = 0x80070070


class IcMsgType(IntEnum):
    """``icmsg_hdr.icmsgtype``."""

    NEGOTIATE = 0
    HEARTBEAT = 1
    KVPEXCHANGE = 2
    SHUTDOWN = 3
    TIMESYNC = 4
    VSS = 5
    FCOPY = 7


class IcFlag(IntFlag):
    """``icmsg_hdr.icflags``; a guest response carries TRANSACTION | RESPONSE."""

    TRANSACTION = 1
    REQUEST = 2
    RESPONSE = 4


class KvpOp(IntEnum):
    """``hv_kvp_exchg_op`` plus the daemon registration codes."""

    GET = 0
    SET = 1
    DELETE = 2
    ENUMERATE = 3
    GET_IP_INFO = 4
    SET_IP_INFO = 5
    #: number of host operations
    COUNT = 6
    #: legacy daemon registration (no IP injection); shares 4 with GET_IP_INFO
    REGISTER = 4
    #: current daemon registration
    REGISTER1 = 100


class RegType(IntEnum):
    """``hv_kvp_exchg_msg_value.value_type`` (registry value types)."""

    REG_SZ = 1
    REG_U32 = 4
    REG_U64 = 8


class AddrFamily(IntFlag):
    """``hv_kvp_ipaddr_value.addr_family``."""

    NONE = 0
    IPV4 = 1
    IPV6 = 2


class VssOp(IntEnum):
    """``hv_vss_op`` plus the daemon registration codes."""

    CREATE = 0
    DELETE = 1
    HOT_BACKUP = 2
    GET_DM_INFO = 3
    BU_COMPLETE = 4
    FREEZE = 5
    THAW = 6
    AUTO_RECOVER = 7
    COUNT = 8
    #: legacy registration, no reply from the kernel
    REGISTER = 128
    #: registration answered by the kernel's 4-byte version
    REGISTER1 = 129


class FcopyOp(IntEnum):
    """``hv_fcopy_op``."""

    START_FILE_COPY = 0
    WRITE_TO_FILE = 1
    COMPLETE_FCOPY = 2
    CANCEL_FCOPY = 3


class FcopyFlag(IntFlag):
    """``hv_start_fcopy.copy_flags``."""

    OVER_WRITE = 0x1
    CREATE_PATH = 0x2


#: The version string the kernel hands the KVP daemon at registration.
HV_DRV_VERSION = "3.1"
#: Only value of vss_cf.flags Linux supports.
VSS_HBU_NO_AUTO_RECOVERY = 0x00000005
#: FCOPY daemon registration: version 0 gets no reply.
FCOPY_VERSION_0 = 0
#: FCOPY daemon registration: version 1 is answered with the kernel's version.
FCOPY_VERSION_1 = 1
#: What a current FCOPY daemon registers with.
FCOPY_CURRENT_VERSION = FCOPY_VERSION_1
#: Seconds the kernel waits for a daemon before answering the host HV_E_FAIL.
HV_UTIL_TIMEOUT = 30
#: Seconds the kernel waits for a VSS FREEZE.
VSS_FREEZE_TIMEOUT = 15 * 60
