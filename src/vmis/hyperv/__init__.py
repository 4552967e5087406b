"""Linux guests on real Hyper-V: the user-space half of ``hv_utils``.

The kernel module ``hv_utils`` carries the Hyper-V integration services; for
Data Exchange (KVP), Backup (VSS) and Guest Service Interface (file copy) it
forwards each host request to a user-space daemon through a character device
(``/dev/vmbus/hv_kvp``, ``hv_vss``, ``hv_fcopy``).  This package is those
daemons, in Python and standard library only, speaking the kernel's own
message layouts byte for byte (docs/hyperv-daemons.md):

``constants``  operation, status (HRESULT) and version codes
``messages``   ``struct`` layouts of every message, sizes asserted
``utf``        the kernel's UTF-16 <-> UTF-8 converters, quirks included
``device``     the character device, or a SOCK_SEQPACKET socket standing in for it
``daemon``     the loop every daemon shares: registration, reopen, SIGTERM, pid file
``kvp`` / ``vss`` / ``fcopy``   the three request handlers (sans-IO: bytes in, bytes out)
``uio``        file copy over the raw VMBus channel (``uio_hv_generic``, newer kernels)
``ipconfig``   KVP GET_IP_INFO / SET_IP_INFO through the helper scripts' interface
``netinfo``    interface addresses and routes via rtnetlink (the daemon's getifaddrs)
``scripts``    Python equivalents of hv_get_dhcp_info, hv_get_dns_info, hv_set_ifconfig
``cli``        ``vmis-guest hyperv kvp|vss|fcopy``

The tests play the kernel's side (and, for uio, the host's side of the VMBus
rings) with an emulator that is not part of this package, so it does not
ship to guests: ``tests/support/hv_emulator/``.
"""
