"""The web console against a lab VM, in Debian's chromium: sign in and out, the
Integration Services pane changing the guest, live changes, KVP, copies, roles."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect
from support.lab import run_vmis

from vmis.api.client import ApiClient
from vmis.lab.lab import Lab

#: generous: a loaded machine; the speed is bench/console_scale.py's
WAIT = 30_000


def _token(lab_dir: Path, name: str, role: str) -> str:
    with ApiClient(lab_dir / "host.sock") as api:
        return str(api.call("POST", "/tokens", json={"name": name, "role": role})["Token"])


def _api(lab_dir: Path, path: str, **params: object) -> list[dict]:
    with ApiClient(lab_dir / "host.sock") as api:
        return api.call("GET", path, params=params)


def _service(lab_dir: Path, name: str) -> dict:
    [row] = _api(lab_dir, "/services", vm="DemoVM", name=name)
    return row


def _sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible(timeout=WAIT)


def _eventually(check, what: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_sign_in_apply_services_live_changes_kvp_copy_and_sign_out(browser: Browser, lab,
                                                                    lab_dir, tmp_path):
    url = Lab(lab_dir).console_url()
    assert url is not None and url.startswith("http://127.0.0.1:")
    status = json.loads(run_vmis(lab_dir, "lab", "status", "--json").out)
    assert status["ConsoleUrl"] == url
    token = _token(lab_dir, "admin", "Administrator")
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()

    # a wrong token is refused, and nothing but the form shows
    page.goto(url)
    page.get_by_label("Token").fill("vmis_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not a valid API token", timeout=WAIT)
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    assert context.cookies() == []

    page.get_by_label("Token").fill(token)
    page.keyboard.press("Enter")  # the form works from the keyboard
    row = page.locator("#vm-table tr[data-vm=DemoVM]")
    expect(row.locator(".heartbeat")).to_have_text("OK (Applications Healthy)", timeout=WAIT)
    expect(row).to_contain_text("Debian GNU/Linux")  # the guest OS, from the Auto pool
    session = {c["name"]: c for c in context.cookies()}["vmis_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    page.screenshot(path=tmp_path / "vm-list.png")

    # the pane: untick VSS, Apply: the guest stops it; tick it, Apply: it starts again
    page.get_by_role("link", name="DemoVM").click()
    vss = page.get_by_role("checkbox", name="VSS", exact=True)
    expect(vss).to_be_checked(timeout=WAIT)
    for name in ("Guest Service Interface", "Heartbeat", "Key-Value Pair Exchange", "Shutdown",
                 "Time Synchronization", "VSS"):
        expect(page.get_by_role("checkbox", name=name, exact=True)).to_be_visible()
    guest_vss = page.locator("#section-guest tr", has_text="VSS")
    for enabled, state in ((False, "stopped"), (True, "running")):
        vss.set_checked(enabled)
        page.get_by_role("button", name="Apply").click()
        expect(guest_vss).to_contain_text(state.capitalize(), timeout=WAIT)
        _eventually(lambda state=state: _service(lab_dir, "VSS")["GuestState"] == state,
                    f"the guest's VSS is not {state}")
        assert _service(lab_dir, "VSS")["Enabled"] is enabled

    # a change from the command line shows without a reload
    page.evaluate("window.notReloaded = true")
    timesync = page.get_by_role("checkbox", name="Time Synchronization", exact=True)
    expect(timesync).to_be_checked()
    assert run_vmis(lab_dir, "Disable-VMIntegrationService", "-VMName", "DemoVM",
                    "-Name", "Time Synchronization").code == 0
    expect(timesync).not_to_be_checked(timeout=WAIT)
    assert run_vmis(lab_dir, "Enable-VMIntegrationService", "-VMName", "DemoVM",
                    "-Name", "Time Synchronization").code == 0
    expect(timesync).to_be_checked(timeout=WAIT)

    # KVP: add an External item, then edit it; the host's pool has it
    page.get_by_label("Key", exact=True).fill("Console")
    page.get_by_label("Value", exact=True).fill("first")
    page.get_by_role("button", name="Set", exact=True).click()
    value = page.get_by_label("Value of Console")
    expect(value).to_have_value("first", timeout=WAIT)
    value.fill("second")
    page.get_by_role("button", name="Save Console").click()
    _eventually(lambda: [i["Value"] for i in _api(lab_dir, "/kvp", vm="DemoVM", pool="External")
                         if i["Key"] == "Console"] == ["second"], "the External edit did not land")

    # a copy each way, with its progress bar full at the end
    page.get_by_role("checkbox", name="Guest Service Interface", exact=True).check()
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#pane-message")).to_have_text("Applied.", timeout=WAIT)
    source = tmp_path / "to-guest.txt"
    source.write_bytes(os.urandom(300_000))
    page.get_by_label("Source path").fill(str(source))
    page.get_by_label("Destination path").fill("/tmp/console/in.bin")
    page.get_by_label("Create full path").check()
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(page.locator("#copy-message")).to_contain_text("Copied", timeout=WAIT)
    assert page.locator("#copy-progress").evaluate("p => p.value") == 1
    root = Lab(lab_dir).vm("DemoVM").root
    assert (root / "tmp/console/in.bin").read_bytes() == source.read_bytes()
    page.get_by_label("Direction").select_option("Guest")
    page.get_by_label("Source path").fill("/tmp/console/in.bin")
    page.get_by_label("Destination path").fill(str(tmp_path / "back.bin"))
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(page.locator("#copy-message")).to_contain_text("Copied", timeout=WAIT)
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    page.screenshot(path=tmp_path / "integration-services-pane.png")

    # a checkpoint taken from the page, listed; the offset plot has its line
    assert run_vmis(lab_dir, "vm", "set-snapshot-command", "-Name", "DemoVM",
                    "-Command", "true").code == 0
    page.get_by_label("Checkpoint name").fill("from-the-console")
    page.get_by_role("button", name="Checkpoint", exact=True).click()
    expect(page.locator("#checkpoint-message")).to_contain_text("Completed", timeout=WAIT)
    expect(page.locator("#section-checkpoints tr", has_text="from-the-console")
           ).to_contain_text("Completed")
    expect(page.locator("#offset-plot polyline")).to_have_count(1, timeout=WAIT)
    expect(page.locator("#offset-label")).to_contain_text("Guest clock offset")

    # the agent dies: Lost Communication, live
    os.kill(Lab(lab_dir).vm("DemoVM").pid, signal.SIGKILL)
    expect(page.locator("#vm-heartbeat")).to_have_text("Lost Communication", timeout=WAIT)
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=tmp_path / "lost-communication.png")

    # the audit log names the console's account, signed in with its cookie
    page.get_by_role("link", name="Audit log").click()
    # by its name: until the view is replaced, "#view table" also finds the VM page's tables
    audit_table = page.get_by_role("table", name="The newest 200 entries, newest first")
    expect(audit_table).to_contain_text("/v1/services/disable", timeout=WAIT)
    audit = _api(lab_dir, "/audit", account="admin")
    assert {e["Via"] for e in audit} == {"cookie"}
    assert any(e["Route"] == "/console/session" for e in audit)

    # sign out: the form is back, and the old cookie opens nothing
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Token")).to_be_visible(timeout=WAIT)
    old = httpx.get(f"{url}v1/account", cookies={"vmis_session": session["value"]})
    assert old.status_code == 401 and "session has ended" in old.json()["error"]
    context.close()


def test_a_reader_sees_disabled_controls_csrf_and_a_removed_token(browser: Browser, lab,
                                                                   lab_dir, tmp_path):
    url = Lab(lab_dir).console_url()
    assert url is not None
    token = _token(lab_dir, "viewer", "Reader")
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, url, token)
    expect(page.get_by_text("Signed in as viewer (Reader)")).to_be_visible()
    expect(page.get_by_role("link", name="Audit log")).to_be_hidden()
    expect(page.get_by_role("button", name="Enable on selected")).to_be_disabled()
    page.get_by_role("link", name="DemoVM").click()
    vss = page.get_by_role("checkbox", name="VSS", exact=True)
    expect(vss).to_be_checked(timeout=WAIT)
    expect(vss).to_be_disabled()
    for button in ("OK", "Apply", "Checkpoint", "Copy"):
        expect(page.get_by_role("button", name=button, exact=True)).to_be_disabled()
    page.screenshot(path=tmp_path / "reader-pane.png")

    # what the page would send, were its buttons enabled: 403, audited as Refused
    refused = page.evaluate("""async () => {
        const csrf = document.cookie.split('; ').find(c => c.startsWith('vmis_csrf=')).slice(10);
        const answer = await fetch('/v1/services/disable', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-VMIS-CSRF': csrf},
            body: JSON.stringify({vms: ['DemoVM'], names: ['VSS']})});
        return [answer.status, (await answer.json()).type];
    }""")
    assert refused == [403, "AccessDenied"]
    assert [e["Result"] for e in _api(lab_dir, "/audit", account="viewer")
            if e["Route"] == "/v1/services/disable"] == ["Refused"]

    # CSRF: the cookie alone, or another site's page, changes nothing
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    body = {"vms": ["DemoVM"], "names": ["VSS"]}
    bare = httpx.post(f"{url}v1/services/disable", json=body, cookies=cookies)
    assert bare.status_code == 403 and "CSRF" in bare.json()["error"]
    foreign = httpx.post(f"{url}v1/services/disable", json=body, cookies=cookies, headers={
        "X-VMIS-CSRF": cookies["vmis_csrf"], "Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "another site" in foreign.json()["error"]
    assert httpx.get(f"{url}v1/account", cookies=cookies).status_code == 200

    # the list follows a VM's heartbeat live too
    page.get_by_role("link", name="← Virtual machines").click()
    heartbeat = page.locator("#vm-table tr[data-vm=DemoVM] .heartbeat")
    expect(heartbeat).to_have_text("OK (Applications Healthy)", timeout=WAIT)
    page.evaluate("window.notReloaded = true")
    os.kill(Lab(lab_dir).vm("DemoVM").pid, signal.SIGKILL)
    expect(heartbeat).to_have_text("Lost Communication", timeout=WAIT)
    assert page.evaluate("window.notReloaded") is True

    # the token is removed: the session ends, its event stream too, and the page
    # signs out by itself (the stream is looked at every 5 s)
    assert run_vmis(lab_dir, "token", "remove", "viewer").code == 0
    expect(page.get_by_label("Token")).to_be_visible(timeout=WAIT)
    expect(page.get_by_role("alert")).to_contain_text("removed")
    assert httpx.get(f"{url}v1/account", cookies=cookies).status_code == 401
    context.close()
