"""Fuzz every harness for a million inputs (or --runs) and report what it found.

For each harness of tests/support/fuzz (one process each, one after the
other) this prints the inputs run, their rate, the crashes (inputs whose
exception the function does not document, or a broken property) by kind,
and the coverage growth: libFuzzer's edge count (``cov``) after the seed
corpus and at each power-of-two input count. A crash does not stop the run
(``VMIS_FUZZ_KEEP_GOING``): every crashing input is counted, and the first of
each kind is kept with its traceback in ``--out`` (default: a directory
under /tmp, printed).

    .venv/bin/python bench/fuzz.py [--runs 1000000] [--seconds 0] [--harness NAME ...] [--seed 1]
    .venv/bin/python bench/fuzz.py --update-seeds 8    # refresh tests/fuzz/corpus

Each harness starts from its seed corpus in tests/fuzz/corpus (copied: the
repository's corpus is never written to, except by --update-seeds, which
keeps the largest inputs of libFuzzer's merge of the work corpus: the fewest
inputs that cover what all of them cover).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SEEDS = TESTS / "fuzz" / "corpus"
sys.path.insert(0, str(TESTS))

from support.fuzz import HARNESSES  # noqa: E402

_LINE = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)")


def _env(scratch: Path, crashes: Path | None) -> dict[str, str]:
    env = dict(os.environ, VMIS_FUZZ_TMP=str(scratch),
               PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH"))
                                          if p))
    if crashes is not None:
        env["VMIS_FUZZ_KEEP_GOING"] = str(crashes)
    return env


def run_one(name: str, runs: int, seed: int, out: Path,
            seconds_limit: int = 0) -> dict[str, object]:
    """Fuzz *name* for *runs* inputs (or *seconds_limit* seconds, if sooner); the figures of
    the run."""
    work = out / name
    corpus, crashes, scratch = work / "corpus", work / "crashes", work / "scratch"
    for d in (corpus, crashes, scratch):
        d.mkdir(parents=True, exist_ok=True)
    for seed_file in (SEEDS / name).iterdir():
        shutil.copy(seed_file, corpus / seed_file.name)
    started = time.monotonic()
    with open(work / "libfuzzer.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "support.fuzz.run", name, f"-runs={runs}", f"-seed={seed}",
             "-timeout=60", f"-max_total_time={seconds_limit}", "-print_final_stats=1",
             f"-artifact_prefix={work}/", str(corpus)],
            stderr=log, stdout=subprocess.DEVNULL, env=_env(scratch, crashes), check=False)
    seconds = time.monotonic() - started
    shutil.rmtree(scratch, ignore_errors=True)
    points: list[tuple[int, int]] = []
    inited = done = 0
    executed = 0
    for line in (work / "libfuzzer.log").read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            n, kind, cov = int(m[1]), m[2], int(m[3])
            points.append((n, cov))
            if kind == "INITED":
                inited = cov
            elif kind == "DONE":
                done, executed = cov, n
        elif line.startswith("stat::number_of_executed_units:"):
            executed = int(line.split(":")[-1])
    # the edges covered after 2^k inputs: the last count printed at or before it
    growth = []
    k = 1
    while points and k <= executed:
        growth.append((k, max((c for n, c in points if n <= k), default=inited)))
        k *= 2
    log_file = crashes / "crashes.log"
    kinds = Counter(line.split("\t")[0] for line in log_file.read_text().splitlines()) \
        if log_file.exists() else Counter()
    return {"name": name, "runs": executed, "seconds": seconds, "returncode": proc.returncode,
            "inited": inited, "done": done, "growth": growth, "crashes": sum(kinds.values()),
            "kinds": kinds, "work": work}


def update_seeds(name: str, work: Path, keep: int) -> int:
    """Replace tests/fuzz/corpus/NAME with the *keep* largest inputs of a merged corpus."""
    merged = work / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    merged.mkdir()
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    # libFuzzer's merge runs argv[0] again for the inputs: a program that is the harness
    program = work / f"fuzz-{name}"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m support.fuzz.run {name} "$@"\n')
    program.chmod(0o755)
    env = dict(_env(scratch, work / "crashes"), VMIS_FUZZ_ARGV0=str(program))
    subprocess.run([sys.executable, "-m", "support.fuzz.run", name, "-merge=1", str(merged),
                    str(work / "corpus")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, check=True)
    chosen = sorted(merged.iterdir(), key=lambda p: p.stat().st_size, reverse=True)[:keep]
    target = SEEDS / name
    for old in target.glob("*"):
        if not old.name.startswith("crash-"):
            old.unlink()
    for i, path in enumerate(chosen):
        shutil.copy(path, target / f"seed-{i:02d}")
    return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per harness")
    parser.add_argument("--seconds", type=int, default=0,
                        help="stop each harness after this many seconds even if it has not run "
                             "--runs inputs (0: no limit)")
    parser.add_argument("--harness", action="append", choices=HARNESSES,
                        help="only these (repeatable); default: all")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--out", type=Path, help="where corpora and crashes go")
    parser.add_argument("--update-seeds", type=int, metavar="N",
                        help="after the run, keep N inputs per harness as its seed corpus")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="vmis-fuzz-bench-"))
    limit = f" or {args.seconds} s" if args.seconds else ""
    print(f"fuzzing, {args.runs} inputs{limit} per harness, seed {args.seed}, load "
          f"{os.getloadavg()[0]:.1f}; work in {out}", flush=True)
    print(f"{'harness':18}{'inputs':>10}{'exec/s':>8}{'crashes':>9}{'kinds':>6}"
          f"{'cov start':>10}{'cov end':>8}  growth (inputs:cov)", flush=True)
    results = []
    for name in args.harness or HARNESSES:
        r = run_one(name, args.runs, args.seed, out, args.seconds)
        results.append(r)
        runs, seconds = int(r["runs"]), float(r["seconds"])  # type: ignore[arg-type]
        growth = r["growth"]
        assert isinstance(growth, list)
        shown = " ".join(f"{n // 1024}k:{c}" for n, c in growth if n >= 1024)
        print(f"{name:18}{runs:>10}{runs / seconds if seconds else 0:>8.0f}{r['crashes']:>9}"
              f"{len(r['kinds']):>6}{r['inited']:>10}{r['done']:>8}  {shown}",  # type: ignore[arg-type]
              flush=True)
        if r["returncode"] not in (0, None):
            print(f"  libFuzzer ended with status {r['returncode']}: see {r['work']}/libfuzzer.log")
        for kind, count in r["kinds"].items():  # type: ignore[attr-defined]
            print(f"  {count:>8} x {kind}  ({r['work']}/crashes)")
        if args.update_seeds:
            kept = update_seeds(name, r["work"], args.update_seeds)  # type: ignore[arg-type]
            print(f"  seed corpus: {kept} inputs")
    total = sum(int(r["crashes"]) for r in results)  # type: ignore[call-overload]
    print(f"total: {sum(int(r['runs']) for r in results)} inputs, {total} crashing")  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
