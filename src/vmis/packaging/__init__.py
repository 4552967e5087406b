"""The guest agent as a deliverable: the bundle (zipapp) and its installer.

Standard library only and below both ``host`` and ``guest``: the host builds
bundles (online update, setup disk, images, offline install), the guest
installs them (online update, the setup disk's installer).
"""
