"""Fuzz harnesses (atheris, libFuzzer's engine for Python) for every decoder of untrusted bytes.

One module per harness in :mod:`.harnesses`, each with ``one_input(data)``:
it hands the bytes (or what a ``FuzzedDataProvider`` makes of them) to the
code under test and lets escape only what that code may not raise. A
*crash* is an exception outside the documented error tree (vmis.errors,
plus what a function's docstring names, e.g. ``ValueError`` for
:func:`vmis.packaging.bundle.bundle_version`), or a property the harness
checks (the same frames whether the bytes come whole or split).

:mod:`.run` runs one harness under atheris (``python -m support.fuzz.run
NAME [libFuzzer options] [corpus dirs]``); ``tests/fuzz`` runs each for a
few seconds, seeded, and ``bench/fuzz.py`` for a million inputs or more.
The seed corpus is ``tests/fuzz/corpus/<harness>/`` (:mod:`.seeds` wrote it).
"""

from __future__ import annotations

__all__ = ["EXTRA_INSTRUMENTED", "HARNESSES"]

#: every harness, by name (a module of support.fuzz.harnesses)
HARNESSES = (
    "frames",
    "session",
    "wire_helpers",
    "guest_handlers",
    "host_handlers",
    "timesync_samples",
    "hv_messages",
    "hv_kvp",
    "hv_vss",
    "hv_fcopy",
    "kvp_pool",
    "psargs",
    "bundle",
)

#: standard-library modules a harness's coverage should count too: the bundle
#: reader is a few lines around zipfile, whose branches are what damage explores
EXTRA_INSTRUMENTED: dict[str, tuple[str, ...]] = {"bundle": ("zipfile",)}
