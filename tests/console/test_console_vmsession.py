"""The console's VM Session view, in Debian's chromium, against a lab VM whose guest
allows /usr/bin and /bin ([vmsession]): an Administrator runs a command and sees its
output and exit status, and the guest's refusal; a Reader gets no view, and a
handshake with the cookie from another site's page is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from support.lab import SESSION_AGENT_CONF, configured_lab
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from vmis.api.client import ApiClient
from vmis.lab.lab import Lab

WAIT = 30_000


@pytest.fixture(scope="module")
def session_lab() -> Iterator[Path]:
    with configured_lab(SESSION_AGENT_CONF) as directory:
        yield directory


def _token(lab_dir: Path, name: str, role: str) -> str:
    with ApiClient(lab_dir / "host.sock") as api:
        return str(api.call("POST", "/tokens", json={"name": name, "role": role})["Token"])


def _signed_in(browser: Browser, lab_dir: Path, account: str,
               role: str) -> tuple[str, BrowserContext, Page]:
    """The console's URL, and a new browser context signed in as a new *account*."""
    url = Lab(lab_dir).console_url()
    assert url is not None
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.get_by_label("Token").fill(_token(lab_dir, account, role))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible(timeout=WAIT)
    return url, context, page


def test_an_administrator_runs_a_command_and_sees_a_refusal(browser: Browser, session_lab,
                                                            tmp_path):
    url, context, page = _signed_in(browser, session_lab, "root-console", "Administrator")
    page.goto(f"{url}#/vm/DemoVM")
    command = page.get_by_label("Command", exact=True)
    expect(command).to_be_visible(timeout=WAIT)
    log = page.get_by_role("log")
    expect(log).to_have_attribute("aria-live", "polite")

    # stdout and stderr as they come, then the exit status
    command.fill("sh -c 'echo out-line; echo err-line >&2; exit 3'")
    page.get_by_role("button", name="Run", exact=True).click()
    status = page.locator("#vmsession-status")
    expect(status).to_have_text("Exit status 3", timeout=WAIT)
    expect(log).to_contain_text("out-line")
    expect(log.locator("[data-stream='2']")).to_contain_text("err-line")
    expect(log.locator("[data-stream='1']")).not_to_contain_text("err-line")

    # a word with a space in quotes is one argument; status 0
    command.fill("printf '%s|' 'a b' c")
    command.press("Enter")
    expect(status).to_have_text("Exit status 0", timeout=WAIT)
    expect(log).to_have_text("a b|c|")
    page.screenshot(path=tmp_path / "vm-session.png")

    # Stop: Ctrl-C to the command, which dies of SIGINT (128 + 2)
    command.fill("sleep 300")
    command.press("Enter")
    stop = page.get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_enabled(timeout=WAIT)
    expect(status).to_contain_text("Running", timeout=WAIT)
    page.wait_for_timeout(500)  # the command started in the guest
    stop.click()
    expect(status).to_contain_text("Exit status 130", timeout=WAIT)
    expect(stop).to_be_disabled()

    # not on the guest's allow-list: the guest's own words
    command.fill("/usr/sbin/nologin")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(status).to_contain_text("not on the guest's allow-list", timeout=WAIT)
    expect(status).to_have_class("bad")
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()

    # the audit log has the commands, under the console's account
    with ApiClient(session_lab / "host.sock") as api:
        audit = api.call("GET", "/audit", params={"account": "root-console"})
    runs = [e for e in audit if e["Route"] == "/v1/vms/{name}/exec"]
    assert {e["Via"] for e in runs} == {"cookie"}
    assert any("echo out-line" in (e["Detail"] or "") for e in runs)
    context.close()


def test_a_reader_has_no_view_and_a_foreign_origin_is_refused(browser: Browser, session_lab):
    url, context, page = _signed_in(browser, session_lab, "reader-console", "Reader")
    page.goto(f"{url}#/vm/DemoVM")
    expect(page.get_by_role("checkbox", name="VSS", exact=True)).to_be_visible(timeout=WAIT)
    expect(page.get_by_label("Command", exact=True)).to_have_count(0)
    expect(page.locator("#section-vmsession")).to_have_count(0)
    ws_url = url.replace("http://", "ws://") + "v1/vms/DemoVM/exec"
    origin = url.rstrip("/")

    def handshake(cookies: dict[str, str], page_origin: str) -> int:
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        try:
            with connect(ws_url, origin=page_origin,  # type: ignore[arg-type]
                         additional_headers={"Cookie": cookie}, open_timeout=20):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    # the Reader's cookie, from the page's own origin: 403 whatever a page does
    reader = {c["name"]: c["value"] for c in context.cookies()}
    assert handshake(reader, origin) == 403
    context.close()

    # an Administrator's cookie: the page's own origin opens, another site's is refused
    _, admin_context, _ = _signed_in(browser, session_lab, "admin-origin", "Administrator")
    admin = {c["name"]: c["value"] for c in admin_context.cookies()}
    assert handshake(admin, origin) == 101
    assert handshake(admin, "http://evil.example") == 403
    admin_context.close()
