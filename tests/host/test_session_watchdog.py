"""A guest agent that goes quiet while its channel stays open is noticed and resynchronised.

On virtio-serial that is what an agent restart looks like from the host (the
socket to QEMU never closes; docs/protocol.md §1, tests/e2e for the real
thing). Here a lab agent is frozen with SIGSTOP: its socket stays connected
and nothing answers, so the host's session watchdog must PING, give up,
close the channel and dial again; after SIGCONT the agent is back to OK.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from vmis.host.session import PING_TIMEOUT


def vm_row(lab: Any) -> dict[str, Any]:
    with lab.api() as api:
        (row,) = api.call("GET", "/vms")
    return row


def wait_for(lab: Any, check: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = vm_row(lab)
        if check(row):
            return row
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s; last: {row}"
        time.sleep(0.2)


def test_a_silent_agent_is_dropped_and_found_again(lab):
    pid = lab.vm("DemoVM").pid
    assert pid is not None and vm_row(lab)["Heartbeat"] == "Ok"
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        # lost after 5 s without beats, then a PING the agent cannot answer
        row = wait_for(lab, lambda r: not r["Connected"], 5 + 2 + PING_TIMEOUT + 5,
                       "the host to drop the session")
        assert time.monotonic() - stopped > PING_TIMEOUT  # not before the PING timed out
        assert row["Heartbeat"] == "LostCommunication"
        log = (lab.dir / "host.log").read_text()
        assert "the guest agent stopped answering (no heartbeat, no answer to PING" in log
    finally:
        os.kill(pid, signal.SIGCONT)
    row = wait_for(lab, lambda r: r["Connected"] and r["Heartbeat"] == "Ok", 30,
                   "the session to come back")
    assert lab.vm("DemoVM").pid == pid  # the same agent: only the session was new
