"""Console scale: the web console's VM list with N lab guests, in a real browser.

With N guests beating every second (in "farm" processes, as
bench/heartbeat_scale.py runs them) and the manager's API on a loopback
port (``-Listen``), measures in one run:

- the baseline, the bare API: ``GET /v1/vms`` over the same TCP listener
  with a token;
- the console's VM list ready in Debian's chromium (Playwright): from the
  page's navigation start to the first frame painted after its table has
  all N rows (signed in already: the session cookie), ``--loads`` times,
  each after the last one's reads are over (target: under 1 s), and the
  ratio to the baseline;
- the two reads the list makes: its rows (``GET /v1/vm-status``), then,
  after its first paint, the guests' Auto pools for their OS and addresses.

The event fan-out to 20 clients and ``/metrics`` are bench/api_scale.py's.

    .venv/bin/python bench/console_scale.py [-n 1024] [--loads 10]

Subprocesses inherit this process's environment (PYTHONPATH included), so a
worktree's sources are measured.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_scale import get, percentile, timed  # beside this file
from heartbeat_scale import farmed_guests, running_manager, scale_arguments

TARGET = 1.0
#: the first frame painted once the table has every row, in ms since navigation start
READY = """n => new Promise(resolve => {
    const check = () => document.querySelectorAll('#vm-table tbody tr').length >= n
        ? requestAnimationFrame(() => resolve(performance.now()))
        : setTimeout(check, 5);
    check();
})"""
#: the guests' OS filled in too (the list reads their Auto pools after its first paint)
POOLS = """() => new Promise(resolve => {
    const check = () => document.querySelector('#vm-table tbody tr:last-child td:nth-child(6)')
        ?.textContent ? resolve(true) : setTimeout(check, 20);
    check();
})"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def console_loads(url: str, token: str, n: int, loads: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.evaluate(READY, n)
        page.evaluate(POOLS)
        ready = []
        for _ in range(loads):
            page.goto(url)
            ready.append(page.evaluate(READY, n) / 1000)
            # the next load starts on a quiet manager, not behind this one's last call
            page.evaluate(POOLS)
        browser.close()
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scale_arguments(parser)
    parser.add_argument("--loads", type=int, default=10, help="page loads measured")
    args = parser.parse_args()
    port = free_port()
    with farmed_guests(args.n, args.farms) as (base, farms):
        print(f"console scale, N={args.n} guests in {farms} processes, 1 s heartbeats")
        with running_manager(base, args.n, "-Listen", f"127.0.0.1:{port}") as (_, client):
            time.sleep(args.settle)
            token = client.post("/v1/tokens", json={"name": "bench", "role": "Reader"}
                                ).json()["Token"]
            url = f"http://127.0.0.1:{port}/"
            with httpx.Client(base_url=url, timeout=120,
                              headers={"Authorization": f"Bearer {token}"}) as tcp:
                bare = timed(get(tcp, "/v1/vms"), 20)
                # what the list reads: the rows, then the guests' Auto pools
                rows = timed(get(tcp, "/v1/vm-status"), 20)
                pools = timed(get(tcp, "/v1/kvp", vm="*", pool="Auto"), 5)
            ready = console_loads(url, token, args.n, args.loads)
    baseline = statistics.median(bare)
    print(f"{'':36}{'median ms':>11}{'p99 ms':>9}{'x /v1/vms':>11}  target")
    for name, values, target in (("GET /v1/vms (bare API, TCP)", bare, None),
                                 ("GET /v1/vm-status (the rows)", rows, None),
                                 ("GET /v1/kvp?vm=*&pool=Auto", pools, None),
                                 ("console VM list ready (chromium)", ready, TARGET)):
        median, p99 = statistics.median(values), percentile(values, 0.99)
        verdict = "" if target is None else (
            f"< {target * 1000:g} ms {'met' if p99 < target else 'MISSED'}")
        print(f"{name:36}{median * 1000:>11.1f}{p99 * 1000:>9.1f}{median / baseline:>11.2f}"
              f"  {verdict}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
