"""Schemathesis against ``/openapi.json`` of a real ``host serve -Listen``, with a token.

Every operation of the document is called with data generated from its
schemas (examples, coverage, fuzzing, and stateful sequences that follow
the links it infers: a VM registered, then used, then removed). The answers
must hold to the document: no server error, every status, content type,
header and body as documented, 401 without the token, 405 with ``Allow``
for a method a path does not take.

Left out: the checks that a request the schema allows is accepted and one
it forbids refused (positive_data_acceptance, negative_data_rejection):
the manager checks more than a schema can say (VM names, channel
addresses, KVP keys) and says so with 400, as it should;
``DELETE /v1/tokens/{name}``, which would remove the run's own token; and
``POST /v1/qemu/vms`` (vm create), which copies the guest image per example,
or builds it, for minutes, when the cache lacks it (tests/qemu test it);
and ``GET /v1/events``, a stream that ends only when the manager stops
(tests/api/test_event_stream.py).

The VMs are registered but have no running guest: on a live guest, the
generated ``timeout`` of a Stop-VM, Restart-VM or update (up to an hour)
would be waited for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from support.served import served_manager

pytestmark = pytest.mark.slow

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,"
          "missing_required_header,unsupported_method,allow_header_conformance,"
          "ignored_auth,use_after_free,ensure_resource_availability")


def test_the_api_holds_to_its_openapi_document(short_tmp):
    with served_manager(short_tmp) as served:
        token = served.token("fuzz", "Administrator")
        with served.local() as local:
            for name in ("DemoVM", "web01"):
                local.call("POST", "/vms", json={
                    "name": name, "channel": f"unix:{short_tmp / name}.agent"})
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{served.url}/openapi.json",
             "-H", f"Authorization: Bearer {token}", "--checks", CHECKS,
             "--exclude-operation-id", "remove_token_v1_tokens__name__delete",
             "--exclude-operation-id", "create_v1_qemu_vms_post",
             "--exclude-operation-id", "events_v1_events_get",
             "--max-examples", "12", "--workers", "1", "--seed", "1",
             "--suppress-health-check", "all", "--no-color"],
            cwd=short_tmp, capture_output=True, text=True, timeout=600,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        report = run.stdout + run.stderr
        assert run.returncode == 0, report[-6000:]
        tested = re.search(r"Tested: (\d+)", report)
        assert tested and int(tested[1]) >= 30, report[-3000:]
        assert "Server error" not in report
