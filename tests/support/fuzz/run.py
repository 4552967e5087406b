"""Run one fuzz harness under atheris: ``python -m support.fuzz.run NAME [libFuzzer args]``.

The vmis modules the harness imports (and those its ``setup()`` imports)
are instrumented for coverage; the harness itself and third-party libraries
are not. Everything after NAME
goes to libFuzzer (``-runs=N -seed=S``, corpus directories: new inputs go
into the first one). libFuzzer stops at the first crash and writes the input
to ``crash-<sha1>`` (``-artifact_prefix=DIR/``).

With ``VMIS_FUZZ_KEEP_GOING=DIR`` a crash does not stop the run: each
crashing input is counted in ``DIR/crashes.log`` (one line: signature, input
file) and the first input of each signature (exception type and the
innermost vmis frame) is saved there, so ``bench/fuzz.py`` can report
crashes and their kinds after a million inputs.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import atheris

from support.fuzz import EXTRA_INSTRUMENTED


def signature(exc: BaseException) -> str:
    """``Type@file:line`` of the innermost frame in vmis (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if "/vmis/" in f.filename] or frames
    where = f"{Path(inside[-1].filename).name}:{inside[-1].lineno}" if inside else "?"
    return f"{type(exc).__name__}@{where}"


def keep_going(one_input: Callable[[bytes], None], directory: Path) -> Callable[[bytes], None]:
    """Wrap *one_input* so that crashes are recorded in *directory* instead of stopping."""
    directory.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()

    def run(data: bytes) -> None:
        try:
            one_input(data)
        except Exception as exc:
            sig = signature(exc)
            name = f"crash-{hashlib.sha1(data).hexdigest()}"
            if sig not in seen:
                seen.add(sig)
                (directory / name).write_bytes(data)
                (directory / f"{name}.txt").write_text("".join(
                    traceback.format_exception(exc)))
            with open(directory / "crashes.log", "a") as log:
                log.write(f"{sig}\t{name}\n")

    return run


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m support.fuzz.run HARNESS [libFuzzer args]")
    name = argv[1]
    include = ["vmis", *EXTRA_INSTRUMENTED.get(name, ())]
    with atheris.instrument_imports(include=include):
        harness = importlib.import_module(f"support.fuzz.harnesses.{name}")
        # what the harness's set-up imports lazily (the guest halves) is instrumented too
        if hasattr(harness, "setup"):
            harness.setup()
    one_input: Callable[[bytes], None] = harness.one_input
    if crash_dir := os.environ.get("VMIS_FUZZ_KEEP_GOING"):
        one_input = keep_going(one_input, Path(crash_dir))
    # A harness that caps file sizes (RLIMIT_FSIZE) wants EFBIG, as Python's
    # ignored SIGXFSZ gives it, not libFuzzer's "file size exceeded" crash.
    # libFuzzer's -merge runs its argv[0] again: VMIS_FUZZ_ARGV0 names a script
    # that does (bench/fuzz.py writes one), since this module is no program
    program = os.environ.get("VMIS_FUZZ_ARGV0", argv[0])
    # -len_control=0: inputs as long as -max_len from the start; the harnesses read
    # them as recipes (FuzzedDataProvider), and a short one is a recipe of defaults.
    atheris.Setup([program, "-handle_xfsz=0", "-len_control=0", *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
