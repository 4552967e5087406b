"""Roles and the audit log, in process: every route of the app is checked as it is.

The routes are enumerated from the app itself (vmis.api.access.app_routes),
never listed by hand, so a route added later is covered by these tests the
day it is added. Requests go through the ASGI app as the TCP listener
serves it (a token needed) or as the Unix socket does (on_unix_socket).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from support.pair import host_guest_pair

from vmis.api.access import (
    ROLES,
    SIGN_IN,
    WEBSOCKET,
    app_routes,
    check_roles,
    on_unix_socket,
    route_keys,
)
from vmis.api.app import create_app
from vmis.errors import InternalError
from vmis.host.accounts import Accounts, Role
from vmis.host.manager import HostManager
from vmis.host.store import Store


def _http_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) of every HTTP route of the app."""
    keys = {key for route in app_routes(app.routes) for key in route_keys(route)}
    return sorted((method, re.sub(r"\{[^}]+\}", "DemoVM", path))
                  for method, path in keys if method != WEBSOCKET)


def _template(path: str) -> str:
    return path.replace("DemoVM", "{name}")


@pytest.fixture
async def served(tmp_path):
    """An app on a manager with no VM: (app, accounts), nothing started but the manager."""
    manager = HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}"))
    await manager.start()
    app = create_app(manager)
    yield app, Accounts(manager.engine)
    await manager.close()


def _client(app: FastAPI, token: str | None = None, local: bool = False) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(
        app=on_unix_socket(app, "local:tester") if local else app),
        base_url="http://vmis", headers=headers)


async def _send(api: httpx.AsyncClient, method: str, path: str) -> httpx.Response:
    body = None if method in ("GET", "DELETE") else {}
    return await api.request(method, path, json=body)


def test_every_route_of_the_app_has_a_role_and_every_role_a_route(tmp_path):
    app = create_app(HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}")))
    keys = {key for route in app_routes(app.routes) for key in route_keys(route)}
    assert keys == set(ROLES)
    assert (WEBSOCKET, "/v1/vms/{name}/exec") in keys  # the enumeration sees WebSockets
    # a sign-in is made without an account: the one exception (vmis.api.access.SIGN_IN)
    changing = {key: role for key, role in ROLES.items() if key[0] != "GET" and key not in SIGN_IN}
    assert set(ROLES) >= SIGN_IN and len(SIGN_IN) == 2
    assert changing and all(role is not None and role >= Role.OPERATOR
                            for role in changing.values())


def test_an_app_with_a_route_the_table_does_not_name_does_not_start(tmp_path):
    app = create_app(HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}")))

    @app.post("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(InternalError, match="POST /v1/forgotten: no line in"):
        check_roles(app.routes)


def test_a_mounted_app_cannot_ask_more_than_a_reader(tmp_path, monkeypatch):
    # authorize is a FastAPI dependency: a mounted ASGI app never reaches it
    app = create_app(HostManager(Store(f"sqlite:///{tmp_path / 'host.db'}")))
    app.mount("/metrics", FastAPI())
    monkeypatch.setitem(ROLES, ("GET", "/metrics"), Role.OPERATOR)
    with pytest.raises(InternalError, match="GET /metrics: a mounted app can only be"):
        check_roles(app.routes)
    monkeypatch.setitem(ROLES, ("GET", "/metrics"), Role.READER)
    check_roles(app.routes)


async def test_without_a_token_every_route_but_the_description_answers_401(served):
    app, _ = served
    async with _client(app) as api:
        for method, path in _http_routes(app):
            answer = await _send(api, method, path)
            if ROLES[(method, _template(path))] is None:
                assert answer.status_code != 401, (method, path)
                continue
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["type"] == "AuthenticationError"
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert (await api.get("/v1/ping", headers={"Authorization": "Bearer vmis_wrong"})
                ).json()["type"] == "AuthenticationError"


async def test_a_reader_is_refused_every_change_and_each_refusal_is_audited(served):
    app, accounts = served
    _, secret = accounts.add_token("viewer", Role.READER, "test")
    changes = [(m, p) for m, p in _http_routes(app) if m != "GET" and (m, p) not in SIGN_IN]
    assert len(changes) >= 20
    async with _client(app, secret) as api:
        for method, path in changes:
            answer = await _send(api, method, path)
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["type"] == "AccessDenied"
        assert (await api.get("/v1/vms")).status_code == 200  # a Reader reads
    log = accounts.audit(accounts=["viewer"], newest=1000)
    assert sorted((e["Method"], e["Route"]) for e in log) == \
        sorted((m, _template(p)) for m, p in changes)
    assert {e["Result"] for e in log} == {"Refused"} and {e["Status"] for e in log} == {403}
    named = [e for e in log if e["Route"].startswith("/v1/vms/{name}")]
    assert named and all(e["VMName"] == ["DemoVM"] for e in named)


async def test_an_operator_is_refused_what_only_an_administrator_may_do(served):
    app, accounts = served
    _, secret = accounts.add_token("ops", Role.OPERATOR, "test")
    admin_only = [(m, p) for m, p in _http_routes(app)
                  if ROLES[(m, _template(p))] == Role.ADMINISTRATOR]
    assert ("POST", "/v1/update") in admin_only and ("POST", "/v1/tokens") in admin_only
    async with _client(app, secret) as api:
        for method, path in admin_only:
            answer = await _send(api, method, path)
            assert answer.status_code == 403, (method, path, answer.text)
        for method, path in _http_routes(app):
            if ROLES[(method, _template(path))] == Role.OPERATOR:
                answer = await _send(api, method, path)
                assert answer.status_code != 403, (method, path, answer.text)
        # a checkpoint with its own snapshot command runs that command on the host
        answer = await api.post("/v1/vms/DemoVM/checkpoints", json={"snapshot_command": "true"})
        assert answer.status_code == 403 and "-SnapshotCommand" in answer.json()["error"]


async def test_removing_a_token_ends_its_access_at_once(served):
    app, accounts = served
    _, secret = accounts.add_token("temp", Role.READER, "test")
    async with _client(app, secret) as api, _client(app, local=True) as admin:
        assert (await api.get("/v1/vms")).status_code == 200
        assert (await admin.delete("/v1/tokens/TEMP")).json()["Name"] == "temp"
        answer = await api.get("/v1/vms")
        assert answer.status_code == 401 and "not valid" in answer.json()["error"]


async def test_a_token_is_shown_once_and_stored_as_its_hash_only(served):
    app, accounts = served
    async with _client(app, local=True) as admin:
        made = (await admin.post("/v1/tokens", json={"name": "ci", "role": "Operator"})).json()
        assert made["Token"].startswith("vmis_") and len(made["Token"]) == 48
        assert made["CreatedBy"] == "local:tester"
        listed = (await admin.get("/v1/tokens")).json()
        assert listed == [{k: v for k, v in made.items() if k != "Token"}]
        again = await admin.post("/v1/tokens", json={"name": "CI", "role": "Reader"})
        assert again.status_code == 409
        bad = await admin.post("/v1/tokens", json={"name": "local:me", "role": "Reader"})
        assert bad.status_code == 400 and "not a token name" in bad.json()["error"]
    with accounts.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT * FROM api_tokens").fetchall()
    assert made["Token"] not in repr(stored)
    assert accounts.find(made["Token"]).name == "ci" and accounts.find(made["Token"] + "x") \
        is None


async def test_changes_are_audited_with_who_what_which_vm_and_how_they_ended(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        app = create_app(pair.manager)
        accounts = Accounts(pair.manager.engine)
        _, secret = accounts.add_token("ops", Role.OPERATOR, "test")
        async with _client(app, secret) as api, _client(app, local=True) as local:
            ok = await api.post("/v1/kvp/set", json={"vms": ["demo*"], "key": "k", "value": "v"})
            assert ok.status_code == 200, ok.text
            missing = await api.post("/v1/kvp/set", json={"vms": ["NoSuchVM"], "key": "k",
                                                          "value": "v"})
            assert missing.status_code == 404
            assert (await local.post("/v1/services/disable",
                                     json={"vms": ["DemoVM"], "names": ["VSS"]})).status_code == 200
            assert (await api.get("/v1/kvp", params={"vm": "DemoVM"})).status_code == 200
            mine = (await api.get("/v1/account")).json()
            assert mine == {"Name": "ops", "Role": "Operator", "Via": "token"}
        log = accounts.audit()
        assert [(e["Account"], e["Route"], e["VMName"], e["Result"], e["Status"]) for e in log] == [
            ("local:tester", "/v1/services/disable", ["DemoVM"], "Completed", 200),
            ("ops", "/v1/kvp/set", ["NoSuchVM"], "Failed", 404),
            ("ops", "/v1/kvp/set", ["DemoVM"], "Completed", 200),  # the wildcard, resolved
        ]  # reads are not audited; the newest first
        assert "no VM named 'NoSuchVM'" in log[1]["Detail"]
        assert log[0]["Via"] == "socket" and log[0]["Client"] == "unix"
        assert log[2]["Client"] == "127.0.0.1" and log[2]["Role"] == "Operator"
        assert [e["Id"] for e in accounts.audit(vms=["demo?m"])] == [log[0]["Id"], log[2]["Id"]]
        assert [e["Id"] for e in accounts.audit(accounts=["local:*"])] == [log[0]["Id"]]
        assert accounts.audit(since=datetime.now(UTC)) == []
