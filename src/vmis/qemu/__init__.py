"""Real virtual machines under QEMU: guest image, machine launcher, QMP, discovery.

This is host-side code (third-party libraries allowed: ``qemu.qmp``).

``vmis.qemu.hypervisor`` the hypervisor backend (vmis.services.hypervisor) for QEMU VMs
``vmis.qemu.image``      the project's Debian guest image, built and cached by its inputs
``vmis.qemu.cmdline``    the QEMU command line of a machine, as a pure function
``vmis.qemu.machine``    :class:`QemuMachine`: wait for the guest; pause, power, snapshot, CD-ROM
``vmis.qemu.process``    :class:`QemuProcess`, its base: start, record, attach, stop
``vmis.qemu.monitor``    :class:`QmpMonitor`: QMP commands to any QEMU
``vmis.qemu.discovery``  QMP socket and agent channel of a VM vmis did not start
``vmis.qemu.offline``    the agent installed into a stopped VM's disk image

Guests run under TCG (software emulation) where the machine has no KVM, as
test machines usually do: docs/real-vms.md.
"""
