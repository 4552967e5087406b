"""The guest image of the real-VM tests: the project's agent image, plus a test configuration.

:func:`install_test_agent` is an :data:`~vmis.qemu.image.layers.AgentInstaller`: it
installs the agent exactly as a user would (:func:`vmis.packaging.install.install_agent`)
and then writes an ``agent.conf`` that turns VM Session on with an allow-list,
so the tests (and ``bench/vm_copy_throughput.py``) can look inside the guest
with ``vmis Invoke-Command``. A product image never allows that much: this
configuration exists only in test images.
"""

from __future__ import annotations

from pathlib import Path

from vmis.packaging.install import install_agent

__all__ = ["TEST_AGENT_CONF", "install_test_agent", "build_test_image"]

#: the test image's /etc/vmis/agent.conf
TEST_AGENT_CONF = """\
# vmis test image (tests/support/vmimage.py): VM Session on, with a wide
# allow-list, so the tests can look inside the guest. Never in a product image.
[agent]
channel = serial:org.vmis.agent.0

[services]
vmicvmsession = automatic

[vmsession]
allow = /usr/bin/*, /usr/sbin/*
"""


def install_test_agent(root: Path) -> None:
    """Install the agent into *root* as a user would, then the test configuration."""
    install_agent(root)
    conf = root / "etc/vmis/agent.conf"
    conf.write_text(TEST_AGENT_CONF)
    conf.chmod(0o644)


def build_test_image() -> Path:
    """The test image's directory in the cache (built first if missing)."""
    from vmis.qemu.image.layers import ensure_agent_image

    return ensure_agent_image(install_test_agent).directory
