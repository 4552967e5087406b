"""Where harnesses keep files: a directory of their own under ``$VMIS_FUZZ_TMP``.

tests/fuzz and bench/fuzz.py point ``VMIS_FUZZ_TMP`` at a temporary
directory they remove afterwards (libFuzzer ends the process without
Python's clean-up); run by hand, harnesses use ``/dev/shm`` (a tmpfs: the
pool files' fsyncs cost nothing there) or the system's temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["scratch_dir"]


def scratch_dir(name: str) -> Path:
    """A new empty directory for one harness process."""
    base = os.environ.get("VMIS_FUZZ_TMP") or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
    return Path(tempfile.mkdtemp(prefix=f"vmis-fuzz-{name}-", dir=base))
