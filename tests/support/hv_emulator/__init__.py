"""Hyper-V without Hyper-V: the kernel's and the host's side of the ``hv_utils`` daemons.

The daemons of :mod:`vmis.hyperv` talk to the kernel's ``hv_utils`` through a
character device (or, for file copy on newer kernels, to the host through the
raw VMBus rings). These modules play the other end, byte for byte, so the
daemons are tested without Hyper-V (docs/hyperv-daemons.md). They live with
the tests so that they do not ship in the guest agent's bundle.

``kernel``              :class:`~support.hv_emulator.kernel.KernelEmulator`: the
                        driver of one service on a SOCK_SEQPACKET socket
``kernel_conversions``  what the driver does to a message between host and daemon
``host_requests``       the host's requests and how it reads the answers
``uio_host``            :class:`~support.hv_emulator.uio_host.UioHostEmulator`: the
                        host of the file-copy channel as ``uio_hv_generic`` exposes it
"""
