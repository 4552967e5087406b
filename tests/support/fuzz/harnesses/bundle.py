"""The agent bundle reader (``vmis.packaging.bundle.bundle_version``) on any bytes.

A bundle comes from the user (``-AgentBundle``, Update-VMIntegrationServices)
or off a setup disk; the input is a small zip archive (members stored,
deflated, bzip2- or lzma-compressed, ``vmis/__init__.py`` among them or
not) whose bytes are then damaged where the input says, or any bytes.

May raise: ValueError, as its docstring says ("not a vmis agent bundle, or
damaged"). Checked: a version read is a non-empty string.
"""

from __future__ import annotations

import io
import zipfile

import atheris

from vmis.packaging.bundle import bundle_version

_METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def _archive(fdp: atheris.FuzzedDataProvider) -> bytes:
    out = io.BytesIO()
    if fdp.ConsumeBool():
        out.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(out, "w") as zf:
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            name = str(fdp.PickValueInList(["vmis/__init__.py", "__main__.py",
                                            "vmis/errors.py", "x"]))
            if name == "vmis/__init__.py" and fdp.ConsumeBool():
                text = f'__version__ = "{fdp.ConsumeUnicodeNoSurrogates(8)}"\n'.encode()
            else:
                text = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = fdp.PickValueInList(_METHODS)
            zf.writestr(info, text)
    data = bytearray(out.getvalue())
    for _ in range(fdp.ConsumeIntInRange(0, 4)):  # damage
        if data:
            data[fdp.ConsumeIntInRange(0, len(data) - 1)] = fdp.ConsumeIntInRange(0, 255)
    if fdp.ConsumeProbability() > 0.9:
        data = data[: fdp.ConsumeIntInRange(0, len(data))]
    return bytes(data)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    bundle = _archive(fdp) if fdp.ConsumeProbability() < 0.9 else fdp.ConsumeBytes(4096)
    try:
        version = bundle_version(bundle)
    except ValueError:
        return
    assert isinstance(version, str) and version
