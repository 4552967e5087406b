"""``/openapi.json`` and ``/docs``: public, complete, and the page works offline."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest

from vmis.api.app import create_app
from vmis.api.docs import ASSETS
from vmis.host.manager import HostManager
from vmis.host.store import Store


@pytest.fixture
async def app(tmp_path):
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}"))
    await manager.start()
    yield create_app(manager)
    await manager.close()


def test_the_vendored_files_are_the_ones_their_readme_names():
    readme = (ASSETS / "README.md").read_text()
    sums = dict(re.findall(r"`([\w.-]+)` ([0-9a-f]{64})", readme))
    assert set(sums) == {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
    for name, digest in sums.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    assert (ASSETS / "LICENSE").read_text().lstrip().startswith("Apache License")


async def test_the_description_and_the_offline_page_need_no_token(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://vmis") as api:
        document = (await api.get("/openapi.json")).json()
        page = (await api.get("/docs")).text
        script = await api.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 1_000_000
    assert "/docs/assets/swagger-ui-bundle.js" in page
    assert not re.search(r"(src|href)=\"https?://", page), "the page loads nothing from afar"
    kvp_set = document["paths"]["/v1/kvp/set"]["post"]
    assert kvp_set["x-vmis-role"] == "Operator" and kvp_set["security"] == [{"token": []}]
    assert {"400", "401", "403", "404", "409", "500", "502", "503", "504"} <= set(
        kvp_set["responses"])
    copy = document["paths"]["/v1/vms/{name}/copy"]["post"]["responses"]["200"]["content"]
    assert set(copy) == {"application/json", "application/x-ndjson"}
    assert "application/x-ndjson" in document["paths"]["/v1/update"]["post"]["responses"][
        "200"]["content"]
    assert "101" in document["paths"]["/v1/vms/{name}/exec"]["get"]["responses"]
