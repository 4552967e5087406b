"""The lab: a host manager and local lab VMs, for demos and tests.

A lab VM is an honest stand-in for a guest: a separate ``vmis-guest run``
process with its own root directory (its config, state, hooks and file-copy
destinations all resolve inside it) and fake clock, power and freeze
adapters, reached by the host only through its channel socket. Everything
lives in the user's one lab directory, found from anywhere: ``$VMIS_LAB_DIR``,
else ``$XDG_STATE_HOME/vmis/lab`` (``~/.local/state/vmis/lab``)::

    ~/.local/state/vmis/lab/                  0700, its files 0600 (vmis.host.private)
      host.sock host.db host.log host.pid     the host manager
      vms/<name>/root/                        the lab VM's filesystem
      vms/<name>/agent.log agent.pid          its agent process
      vms/<name>/init.pid                     its init (vmis.lab.vmproc)

A lab VM may instead be a real QEMU virtual machine booted from the
project's guest image (``vmis lab up NAME -Qemu``, :mod:`vmis.lab.qemuvm`);
its directory is then the machine's work directory.

``lab``        :class:`~vmis.lab.lab.Lab` (the directory and what runs from it),
               :class:`~vmis.lab.lab.LabVm`, ``vmis lab up`` as a function
``processes``  pid files, liveness, starting in the background, stopping
``vmproc``     a process lab VM's init: runs its installed agent as systemd would
``qemuvm``     lab VMs that are real QEMU virtual machines
"""
