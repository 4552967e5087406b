"""libvirt as a hypervisor backend (docs/architecture.md §4, docs/real-vms.md "libvirt").

The host manager is given libvirt connection URIs (``vmis host serve
-Hypervisor qemu:///system``); a VM whose record names one of them and a
domain (``libvirt_uri``, ``libvirt_domain``) is powered, snapshotted and
given discs through libvirt's API, by :class:`~vmis.libvirt.hypervisor.LibvirtHypervisor`.
libvirt-python is imported only when a connection is opened, so a manager
without ``-Hypervisor`` needs no libvirt at all.
"""
