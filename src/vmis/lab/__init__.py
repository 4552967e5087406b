"""The lab: a host manager and local lab VMs, for demos and tests.

A lab VM is an honest stand-in for a guest: a separate ``vmis-guest run``
process in a sandbox whose ``/`` is the VM's own root directory (its config,
state, hooks and file-copy destinations all live there), with its own
processes, host name and network, and fake clock, power and freeze adapters,
reached by the host only through its channel socket (docs/lab.md).
Everything lives in the user's one lab directory, found from anywhere:
``$VMIS_LAB_DIR``, else ``$XDG_STATE_HOME/vmis/lab`` (``~/.local/state/vmis/lab``)::

    ~/.local/state/vmis/lab/                  0700, its files 0600 (vmis.host.private)
      host.sock host.db host.log host.pid     the host manager
      vms/<name>/root/                        the lab VM's filesystem: its /
      vms/<name>/agent.log agent.pid          its agent process
      vms/<name>/init.pid                     its init (vmis.lab.vmproc)
      vms/<name>/sandbox/                     its sandbox's /usr overlay (vmis.lab.sandbox)

A lab VM may instead be a real QEMU virtual machine booted from the
project's guest image (``vmis lab up NAME -Qemu``, :mod:`vmis.lab.qemuvm`);
its directory is then the machine's work directory.

``lab``        :class:`~vmis.lab.lab.Lab` (the directory and what runs from it),
               :class:`~vmis.lab.lab.LabVm`, ``vmis lab up`` as a function
``processes``  pid files, liveness, starting in the background, stopping
``vmproc``     a process lab VM's init: runs its installed agent as systemd would
``sandbox``    the bubblewrap sandbox a process lab VM's agent runs in
``qemuvm``     lab VMs that are real QEMU virtual machines
"""
