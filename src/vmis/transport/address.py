"""Channel addresses as users write them, and their parsed forms.

=======================  =====================================================
``unix:/path``           Unix stream socket (lab agents; QEMU ``-chardev socket``)
``vsock:CID:PORT``       AF_VSOCK; the host dials the guest's CID, the guest
                         listens on PORT (``vsock:PORT`` on the guest side)
``hvsock:/path:PORT``    hybrid vsock of Firecracker / Cloud Hypervisor: a Unix
                         socket on the host, ``CONNECT PORT`` handshake
``serial:/dev/...``      guest side of a virtio-serial port (a character device);
                         ``serial:org.vmis.agent.0`` looks the port up by name
=======================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from vmis.errors import ConfigError

__all__ = [
    "DEFAULT_PORT_NAME",
    "DEFAULT_VSOCK_PORT",
    "Address",
    "HybridVsockAddress",
    "SerialAddress",
    "UnixAddress",
    "VsockAddress",
    "parse_address",
]

#: the virtio-serial port name vmis uses (docs/real-vms.md)
DEFAULT_PORT_NAME = "org.vmis.agent.0"
#: the vsock port the guest agent listens on unless configured otherwise
DEFAULT_VSOCK_PORT = 7460


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A Unix stream socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class VsockAddress:
    """An AF_VSOCK context id and port (cid -1 = any, for listening)."""

    cid: int
    port: int

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}" if self.cid >= 0 else f"vsock:{self.port}"


@dataclass(frozen=True, slots=True)
class HybridVsockAddress:
    """Firecracker-style vsock: a host Unix socket plus the guest port to CONNECT to."""

    path: str
    port: int

    def __str__(self) -> str:
        return f"hvsock:{self.path}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialAddress:
    """A virtio-serial port: a device path, or a port name to look up."""

    device: str

    def __str__(self) -> str:
        return f"serial:{self.device}"


Address = UnixAddress | VsockAddress | HybridVsockAddress | SerialAddress


def _port(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number, not {text!r}") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise ConfigError(f"{what} out of range: {value}")
    return value


def parse_address(text: str) -> Address:
    """Parse a channel address (forms in the module docstring).

    :raise ConfigError: With a message naming the accepted forms.
    """
    scheme, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ConfigError(
            f"invalid channel address {text!r}: expected unix:/path, vsock:CID:PORT, "
            "hvsock:/path:PORT or serial:/dev/..."
        )
    scheme = scheme.lower()
    if scheme == "unix":
        return UnixAddress(rest)
    if scheme == "vsock":
        cid, sep, port = rest.rpartition(":")
        if not sep:
            return VsockAddress(-1, _port(port, "vsock port"))
        return VsockAddress(_port(cid, "vsock CID"), _port(port, "vsock port"))
    if scheme == "hvsock":
        path, sep, port = rest.rpartition(":")
        if not sep or not path:
            raise ConfigError(f"invalid hybrid vsock address {text!r}: expected hvsock:/path:PORT")
        return HybridVsockAddress(path, _port(port, "vsock port"))
    if scheme == "serial":
        return SerialAddress(rest)
    raise ConfigError(f"unknown channel type {scheme!r} in {text!r}")
