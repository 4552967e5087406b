"""Get-VM's Uptime: how long the guest's system has run, from its agent's handshake;
a small number that grows for a lab VM that just started, null (empty) once the
host cannot know; in --json, the CLI's table and the console's VM list."""

from __future__ import annotations

import json
import os
import re
import signal
import time

from playwright.sync_api import Browser, expect
from support.lab import run_vmis

from vmis.api.client import ApiClient
from vmis.lab.lab import Lab

WAIT = 30_000


def _uptime(lab_dir) -> object:
    [vm] = json.loads(run_vmis(lab_dir, "Get-VM", "-Name", "DemoVM", "--json").out)
    return vm["Uptime"]


def _seconds(text: str) -> int:
    match = re.fullmatch(r"(\d\d):(\d\d):(\d\d)", text)
    assert match, text
    hours, minutes, seconds = (int(g) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_a_lab_vms_uptime_grows_and_is_empty_once_unknown(browser: Browser, lab, lab_dir):
    first = _uptime(lab_dir)
    # the lab VM started moments ago: not the host's uptime, which /proc/uptime is
    assert isinstance(first, int) and 0 <= first < 300
    time.sleep(2.2)
    later = _uptime(lab_dir)
    assert isinstance(later, int) and later >= first + 2
    table = run_vmis(lab_dir, "Get-VM").out.splitlines()
    assert table[0].split()[:4] == ["Name", "State", "Heartbeat", "Uptime"]
    [row] = [line for line in table if line.startswith("DemoVM ")]
    assert re.search(r" 00:0\d:\d\d ", row), row

    url = Lab(lab_dir).console_url()
    assert url is not None
    with ApiClient(lab_dir / "host.sock") as api:
        token = api.call("POST", "/tokens", json={"name": "up", "role": "Reader"})["Token"]
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("columnheader", name="Uptime")).to_be_visible(timeout=WAIT)
    cell = page.locator("#vm-table tr[data-vm=DemoVM] .uptime")
    expect(cell).to_have_text(re.compile(r"^00:0\d:\d\d$"), timeout=WAIT)
    shown = _seconds(cell.inner_text())
    # it goes on between reads, as Hyper-V Manager's does
    page.wait_for_timeout(3500)
    assert _seconds(cell.inner_text()) >= shown + 2

    # the agent dies: the guest may restart unseen, so the host no longer knows
    os.kill(Lab(lab_dir).vm("DemoVM").pid, signal.SIGKILL)
    expect(page.locator("#vm-table tr[data-vm=DemoVM] .heartbeat")).to_have_text(
        "Lost Communication", timeout=WAIT)
    expect(cell).to_have_text("", timeout=WAIT)
    assert _uptime(lab_dir) is None
    context.close()
