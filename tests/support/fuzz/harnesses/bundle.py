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
import lzma
import struct
import zipfile

import atheris

from vmis.packaging.bundle import bundle_version

_METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


class _SmallLzma(zipfile.LZMACompressor):
    """LZMA members with a 4 KiB dictionary and a fast match finder.

    zipfile's own set up an 8 MiB dictionary and its match finder's tables,
    about 1.9 ms per member to write and read back: most of an input's time.
    These take 0.3 ms, and the reader under test decodes them the same way
    (the dictionary size travels in the member's properties).
    """

    def _init(self) -> bytes:
        props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1, "dict_size": 4096})
        self._comp = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[
            {"id": lzma.FILTER_LZMA1, "dict_size": 4096, "mode": lzma.MODE_FAST,
             "mf": lzma.MF_HC3, "nice_len": 8}])
        return struct.pack("<BBH", 9, 4, len(props)) + props


zipfile.LZMACompressor = _SmallLzma  # type: ignore[misc]  # this fuzzing process only


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
