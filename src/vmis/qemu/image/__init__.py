"""The project's guest image: a Debian 12 machine with systemd, Python and the vmis agent.

Two layers, each cached under :func:`~vmis.qemu.image._cache.cache_dir` by a
key of its inputs:

- the **base image** (:func:`~vmis.qemu.image.layers.ensure_base_image`, about
  a minute cold): the Debian kernel, a busybox initramfs and a ``debootstrap``
  root file system; keyed by the recipe (:mod:`vmis.qemu.image._recipe`:
  package list, modules, configuration files, recipe version) and the kernel
  package version apt currently offers;
- an **agent layer** (:func:`~vmis.qemu.image.layers.ensure_agent_image`,
  seconds): the base root plus whatever an installer puts into it, by default
  :func:`vmis.packaging.install.install_agent`; keyed additionally by a digest
  of the files the installer writes.

Builds take a per-image lock, so concurrent test processes build once, and
are published by an atomic rename, so an interrupted build is never used.
Building needs root (debootstrap, chroot) and Debian's tools
(``dev/apt-packages-vm.txt``); using a built image needs only QEMU.

Usage::

    image = ensure_agent_image()          # builds what is missing
    machine = QemuMachine("vm1", workdir, image)

From a shell: ``python -m vmis.qemu.image build``.

``layers``       the two layers: built once, found again by key
``guest_image``  :class:`~vmis.qemu.image.guest_image.GuestImage`, a built image and how it boots
``pruning``      the least recently used images and the oldest logs go
``_cache``       the cache's layout, locks and atomic publication
``_recipe``      what goes into the base image; ``_build`` builds it, ``_debian``,
                 ``_kernel``, ``_cpio`` and ``_steps`` help
"""
