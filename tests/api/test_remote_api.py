"""The API over TCP, as ``vmis host serve -Listen`` serves it: tokens, TLS, the CLI.

Each test runs a real host manager process on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

import httpx
import pytest
from support.served import served_manager

from vmis.api.certs import fingerprint
from vmis.errors import AccessDenied, AuthenticationError, ConnectError, NotFoundError


def _vmis(env: dict[str, str] | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmis.cli.host", *args],
                          env=env if env is not None else dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_plain_http_is_refused_on_an_address_that_is_not_loopback(short_tmp):
    run = _vmis(None, "host", "serve", "-Db", f"sqlite:///{short_tmp / 'host.db'}",
                "-Socket", str(short_tmp / "host.sock"), "-Listen", "0.0.0.0:0")
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "is not a loopback address" in run.stderr
    assert not (short_tmp / "host.sock").exists()  # refused before anything started
    run = _vmis(None, "host", "serve", "-SelfSignedCertificate")
    assert run.returncode == 2 and "for -Listen" in run.stderr


def test_the_command_line_reaches_the_manager_with_a_token(short_tmp):
    with served_manager(short_tmp) as served:
        assert served.url.startswith("http://127.0.0.1:")
        made = _vmis(served.env(), "token", "add", "ops", "-Role", "Operator",
                     "-Server", served.url)
        assert made.returncode == 1 and "needs a token" in made.stderr  # none over TCP
        reader = served.token("viewer", "Reader")
        operator = served.token("ops", "Operator")
        listed = _vmis(served.env(reader), "Get-VM", "--json")
        assert listed.returncode == 0 and json.loads(listed.stdout) == []
        refused = _vmis(served.env(reader), "Set-VMKvp", "-VMName", "DemoVM", "-Key", "k",
                        "-Value", "v", "--json")
        assert refused.returncode == 1
        assert json.loads(refused.stderr)["Type"] == "AccessDenied"
        # -Server wins over $VMIS_URL
        env = {**served.env(operator), "VMIS_URL": "http://127.0.0.1:1"}
        missing = _vmis(env, "Set-VMKvp", "-VMName", "DemoVM", "-Key", "k", "-Value", "v",
                        "-Server", served.url)
        assert missing.returncode == 1 and "no VM named 'DemoVM'" in missing.stderr
        audit = _vmis({**served.env(), "VMIS_SOCKET": str(served.socket), "VMIS_URL": ""},
                      "Get-VMAuditLog", "-VMName", "demo*", "--json")
        rows = json.loads(audit.stdout)
        assert [(r["Account"], r["Result"], r["Status"]) for r in rows] == [
            ("ops", "Failed", 404), ("viewer", "Refused", 403)]
        assert {r["Client"] for r in rows} == {"127.0.0.1"}
        removed = _vmis({**served.env(), "VMIS_SOCKET": str(served.socket), "VMIS_URL": ""},
                        "token", "remove", "ops")
        assert removed.returncode == 0
        gone = _vmis(served.env(operator), "Get-VM")
        assert gone.returncode == 1 and "not valid" in gone.stderr


def test_a_self_signed_certificate_is_made_kept_and_trusted_only_when_asked(short_tmp):
    with served_manager(short_tmp, "-SelfSignedCertificate") as served:
        cert, key = short_tmp / "tls/api-cert.pem", short_tmp / "tls/api-key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((short_tmp / "tls").stat().st_mode) == 0o700
        assert served.url.startswith("https://") and served.fingerprint == fingerprint(cert)
        token = served.token("admin", "Administrator")
        with served.remote(token) as untrusting, pytest.raises(ConnectError) as refused:
            untrusting.call("GET", "/vms")
        assert "not trusted" in str(refused.value) and served.fingerprint in str(refused.value)
        with served.remote(token, pin=served.fingerprint) as pinned:
            assert pinned.call("GET", "/account")["Name"] == "admin"
            with pytest.raises(NotFoundError):  # a stream (httpx) through the same pin
                list(pinned.stream("POST", "/vms/NoSuchVM/copy?stream=true",
                                   json={"source": "/etc/hostname", "destination": "/tmp/"}))
        with served.remote(token, ca=str(cert)) as by_ca:
            assert by_ca.call("GET", "/vms") == []
        wrong = served.fingerprint.replace(served.fingerprint[:2], "00" if served.fingerprint[
            :2] != "00" else "11", 1)
        with served.remote(token, pin=wrong) as mispinned, pytest.raises(ConnectError) as other:
            mispinned.call("GET", "/vms")
        assert "not the one pinned" in str(other.value)
    with served_manager(short_tmp, "-SelfSignedCertificate") as again:
        assert again.fingerprint == served.fingerprint  # kept across restarts: pins hold


async def _exec(client, vm: str) -> dict:
    ws = await client.websocket(f"/vms/{vm}/exec", open_timeout=30)
    try:
        await ws.send(json.dumps({"type": "start", "argv": ["uname", "-a"]}))
        return json.loads(await ws.recv())
    finally:
        await ws.close()


def test_invoke_commands_websocket_checks_the_token_and_the_role(short_tmp):
    with served_manager(short_tmp, "-SelfSignedCertificate") as served:
        admin = served.token("admin", "Administrator")
        operator = served.token("ops", "Operator")
        pin = {"pin": served.fingerprint}
        with served.remote(admin, **pin) as client:
            answer = asyncio.run(_exec(client, "NoSuchVM"))
        assert answer["type"] == "error" and answer["error_type"] == "NotFoundError"
        with served.remote(operator, **pin) as client, pytest.raises(AccessDenied):
            asyncio.run(_exec(client, "NoSuchVM"))
        with served.remote(None, **pin) as client, pytest.raises(AuthenticationError):
            asyncio.run(_exec(client, "NoSuchVM"))
        with served.local() as local:
            log = local.call("GET", "/audit", params={"vm": "NoSuchVM"})
        assert [(e["Account"], e["Method"], e["Result"]) for e in log] == [
            ("ops", "WEBSOCKET", "Refused"), ("admin", "WEBSOCKET", "Failed")]
        assert log[1]["Detail"].startswith("uname -a")


def test_an_event_stream_ends_when_its_token_is_removed(short_tmp):
    with served_manager(short_tmp) as served:
        token = served.token("watcher", "Reader")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", f"{served.url}/v1/events", headers=headers,
                          params={"keepalive": 0.2}, timeout=30) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            with served.local() as api:
                api.call("DELETE", "/tokens/watcher")
            removed = time.monotonic()
            for _ in lines:  # keepalives, until the stream ends
                assert time.monotonic() - removed < 20, "the stream outlived its token"
            assert time.monotonic() - removed < 20
        again = httpx.get(f"{served.url}/v1/events", headers=headers, timeout=30)
        assert again.status_code == 401
