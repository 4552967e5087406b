"""vmis: integration services for virtual machines.

Layers, imported only downward (``tests/test_static.py`` enforces it):

``protocol``   sans-IO wire codec and session state machine (bytes in, events out)
``transport``  asyncio adapters: Unix socket, AF_VSOCK, hybrid vsock, virtio-serial
``services``   one package per integration service, host half and guest half
``host`` / ``guest`` / ``hyperv``   compositions: host manager, guest agent, Hyper-V daemons
``api``        the host manager's local HTTP API
``advisor``    the update advisor: a data lookup that needs nothing of vmis but its errors
``cli``        the ``vmis`` and ``vmis-guest`` command lines

The guest side (protocol, transport, services, guest, hyperv, cli.guest) uses
the standard library only.
"""

__version__ = "0.1.0"
