"""The web console in a real browser: Debian's chromium driven by Playwright.

Playwright's own browser download needs the internet; dev/setup --test installs
Debian's chromium, which these tests launch; without it they fail, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


# module, not session: while Playwright's sync API is open, an event loop runs in this
# thread, and the asyncio tests of the next modules could not start theirs
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert CHROMIUM.exists(), "no /usr/bin/chromium: dev/setup --test installs it"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: chromium's sandbox needs user namespaces a container may not give
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox"],
                                             env={**os.environ, "HOME": "/tmp"})
        yield browser
        browser.close()
