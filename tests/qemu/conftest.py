"""Fixtures of the real-VM tests: the probe image, built (and cached) on first use."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from qemu_probe import install_probe

from vmis.qemu.image.guest_image import GuestImage
from vmis.qemu.image.layers import ensure_agent_image


@pytest.fixture(scope="session")
def probe_image() -> GuestImage:
    """The base image plus the test probe service (builds the base image if the cache lacks it).

    Skips only when QEMU is not installed; a failing build is a test error.
    """
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    return ensure_agent_image(install_probe)
