"""The event stream and the metrics of a real lab (host manager and agent processes),
through the wire (httpx on the socket) and through ``vmis Get-VMEvent``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import vmis
from support.lab import run_vmis, start_lab
from vmis.api.client import ApiClient
from vmis.api.sse import SseDecoder
from vmis.errors import ConfigError


def http(lab_dir: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(lab_dir / "host.sock")),
                        base_url="http://vmis", timeout=30)


class Reader:
    """Reads an SSE answer in a thread: its raw lines and its events, as they come."""

    def __init__(self, lab_dir: Path, **kwargs) -> None:
        self.client = http(lab_dir)
        self.lines: list[str] = []
        self.events: list[dict] = []
        self.ids: list[str | None] = []
        self.response: httpx.Response | None = None
        self._kwargs = kwargs
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(30), "the stream did not start"

    def _run(self) -> None:
        decoder = SseDecoder()
        with self.client.stream("GET", "/v1/events", **self._kwargs) as response:
            self.response = response
            self._started.set()
            try:
                for line in response.iter_lines():
                    self.lines.append(line)
                    event = decoder.feed(line)
                    if event is not None:
                        self.ids.append(event.id)
                        self.events.append(event.json())
            except httpx.HTTPError:
                pass

    def wait(self, check, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := check(self):
                return found
            time.sleep(0.05)
        raise AssertionError(f"not seen within {timeout} s; lines: {self.lines[-20:]}")

    def close(self) -> None:
        self.client.close()


def vmis_ok(lab_dir: Path, *args: str) -> str:
    result = run_vmis(lab_dir, *args)
    assert result.code == 0, result.err
    return result.out


def test_the_stream_filters_keeps_alive_and_resumes_after_an_id(lab, lab_dir):
    reader = Reader(lab_dir, params={"vm": "demo*", "type": "settings,service",
                                     "keepalive": "0.2"})
    try:
        assert reader.response is not None
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        assert reader.response.headers["cache-control"] == "no-cache"
        reader.wait(lambda r: ": keepalive" in r.lines)
        assert reader.lines[0] == "retry: 2000"
        vmis_ok(lab_dir, "Disable-VMIntegrationService", "-VMName", "DemoVM", "-Name", "VSS")
        reader.wait(lambda r: any(e["Type"] == "service" and e["Name"] == "VSS"
                                  and e["Enabled"] is False for e in r.events))
        settings = next(e for e in reader.events if e["Type"] == "settings")
        assert (settings["VMName"], settings["Name"], settings["Enabled"]) == ("DemoVM", "VSS",
                                                                             False)
        assert {e["Type"] for e in reader.events} == {"settings", "service"}
        assert reader.ids == [str(e["Id"]) for e in reader.events]
    finally:
        vmis_ok(lab_dir, "Enable-VMIntegrationService", "-VMName", "DemoVM", "-Name", "VSS")
        reader.close()

    # Resume: the header a browser sends wins over ?after
    first = settings["Id"]
    resumed = Reader(lab_dir, params={"type": "settings,service", "after": "0"},
                     headers={"Last-Event-ID": str(first)})
    try:
        events = resumed.wait(lambda r: len(r.events) >= 3 and r.events)
        assert all(e["Id"] > first for e in events)
        assert events[0]["Id"] == reader.events[1]["Id"]
        # ...and the kept ones come before the live ones, in order
        assert any(e["Type"] == "settings" and e["Enabled"] is True for e in events)
        ids = [e["Id"] for e in events]
        assert ids == sorted(ids)
    finally:
        resumed.close()
    # a client that went away leaves no subscription behind
    deadline = time.monotonic() + 20
    while value(metrics(lab_dir), "vmis_event_subscribers") != 0:
        assert time.monotonic() < deadline, "the closed streams' subscriptions stayed"
        time.sleep(0.1)

    with http(lab_dir) as client:
        bad = client.get("/v1/events", params={"type": "heartbeats"})
        assert bad.status_code == 400 and "no event type heartbeats" in bad.json()["error"]
        bad = client.get("/v1/events", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]
    with ApiClient(lab_dir / "host.sock") as api, pytest.raises(ConfigError, match="bogus"):
        next(api.sse("/events", {"type": "bogus"}))


def test_get_vmevent_prints_the_kept_events_as_a_table_or_json_lines(lab, lab_dir):
    vmis_ok(lab_dir, "Set-VMKvp", "-VMName", "DemoVM", "-Key", "role", "-Value", "db")
    table = vmis_ok(lab_dir, "Get-VMEvent", "-VMName", "DemoVM", "-Type", "kvp").splitlines()
    assert table[0].split() == ["Id", "Time", "Type", "VMName", "Details"]
    assert table[-1].split()[3:] == ["kvp", "DemoVM", "Pool=External", "Key=role",
                                     "Delivered=True"]
    lines = vmis_ok(lab_dir, "Get-VMEvent", "--json", "-Newest", "3").splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 3 and [e["Id"] for e in events] == sorted(e["Id"] for e in events)
    everything = [json.loads(line) for line in vmis_ok(lab_dir, "Get-VMEvent", "--json")
                  .splitlines()]
    # the guest keeps publishing (its KVP pools): later calls may see more events
    end = [e["Id"] for e in everything].index(events[-1]["Id"]) + 1
    assert events == everything[end - 3:end] and everything[0]["Type"] == "host"
    after = vmis_ok(lab_dir, "Get-VMEvent", "--json", "-After", str(everything[-2]["Id"]))
    assert [json.loads(line) for line in after.splitlines()][:1] == everything[-1:]
    bad = run_vmis(lab_dir, "Get-VMEvent", "-Type", "nope")
    assert bad.code == 1 and bad.err.startswith("Get-VMEvent: no event type nope; the types")


@pytest.mark.slow
def test_get_vmevent_wait_follows_across_a_restart_of_the_manager(lab_dir):
    start_lab(lab_dir)
    env = dict(os.environ, VMIS_LAB_DIR=str(lab_dir), VMIS_SOCKET=str(lab_dir / "host.sock"))
    follow = subprocess.Popen(
        [sys.executable, "-m", "vmis.cli.host", "Get-VMEvent", "-Wait", "--json", "-Type",
         "host,settings"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())  # the kept host Up
        assert (first["Type"], first["State"]) == ("host", "Up")
        vmis_ok(lab_dir, "Disable-VMIntegrationService", "-VMName", "DemoVM", "-Name", "VSS")
        assert json.loads(follow.stdout.readline())["Type"] == "settings"
        # A stopped manager ends the stream itself (its last event host Down), so it
        # need not wait for the stream's client; the command waits for the next one.
        run_vmis(lab_dir, "lab", "down")
        down = json.loads(follow.stdout.readline())
        assert (down["Type"], down["State"]) == ("host", "Down")
        start_lab(lab_dir)
        up = json.loads(follow.stdout.readline())
        assert (up["Type"], up["State"]) == ("host", "Up") and up["Id"] > down["Id"]
        vmis_ok(lab_dir, "Enable-VMIntegrationService", "-VMName", "DemoVM", "-Name", "VSS")
        again = json.loads(follow.stdout.readline())
        assert again["Type"] == "settings" and again["Enabled"] is True
        assert again["Id"] > up["Id"]
    finally:
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    assert follow.returncode == 130
    notices = [json.loads(line)["Warning"] for line in err.splitlines()]
    assert notices[0] == (f"the host manager ended the event stream; reconnecting, to resume "
                          f"after event {down['Id']}")
    assert notices[1] == f"reconnected; resuming after event {down['Id']}"


def metrics(lab_dir: Path) -> dict:
    with http(lab_dir) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(answer.text)}


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    found = [s.value for s in families[family].samples
             if s.name == (sample or family) and all(s.labels.get(k) == v
                                                      for k, v in labels.items())]
    assert len(found) == 1, (family, labels, families[family].samples[:5])
    return found[0]


def test_metrics_of_a_lab_vm(lab, lab_dir):
    got = metrics(lab_dir)
    assert value(got, "vmis_vms") == 1
    assert value(got, "vmis_vm_connected", vm="DemoVM") == 1
    assert value(got, "vmis_guest_agent_info", vm="DemoVM", version=vmis.__version__) == 1
    rows = json.loads(vmis_ok(lab_dir, "Get-VMIntegrationService", "DemoVM", "--json"))
    for row in rows:
        assert value(got, "vmis_integration_service_enabled", vm="DemoVM",
                     service=row["Name"]) == int(row["Enabled"])
        assert value(got, "vmis_integration_service_primary_status", vm="DemoVM",
                     service=row["Name"]) == 2
    assert value(got, "vmis_integration_service_secondary_status", vm="DemoVM",
                 service="Heartbeat") == 2
    assert value(got, "vmis_heartbeat_state", vm="DemoVM", state="Ok") == 1
    assert value(got, "vmis_heartbeat_state", vm="DemoVM", state="LostCommunication") == 0
    interval = json.loads(vmis_ok(lab_dir, "vm", "list", "--json"))[0]["HeartbeatIntervalMs"]
    assert 0 < value(got, "vmis_heartbeat_gap_seconds", vm="DemoVM") < 3 * interval / 1000
    assert abs(value(got, "vmis_timesync_offset_seconds", vm="DemoVM")) < 1
    assert 0 < value(got, "vmis_timesync_round_trip_seconds", vm="DemoVM") < 1
    assert value(got, "vmis_kvp_pool_items", vm="DemoVM", pool="Auto") > 0
    assert value(got, "vmis_kvp_pending_writes", vm="DemoVM") == 0
    ok = value(got, "vmis_channel_requests", "vmis_channel_requests_total", service="timesync",
               outcome="ok")
    assert ok > 0
    assert value(got, "vmis_channel_request_duration_seconds",
                 "vmis_channel_request_duration_seconds_count", service="timesync") >= ok
    assert value(got, "vmis_events", "vmis_events_total") > 0
    assert value(got, "vmis_events_dropped", "vmis_events_dropped_total") == 0
    assert value(got, "vmis_build_info", version=vmis.__version__) == 1
    assert value(got, "process_resident_memory_bytes") > 0

    # a checkpoint's freeze and a copy each way, tallied from their events
    vmis_ok(lab_dir, "vm", "set-snapshot-command", "DemoVM", "true")
    vmis_ok(lab_dir, "Checkpoint-VM", "-Name", "DemoVM", "-SnapshotType", "Production")
    vmis_ok(lab_dir, "Enable-VMIntegrationService", "-VMName", "DemoVM", "-Name",
            "Guest Service Interface")
    source = lab_dir.parent / "payload.bin"
    source.write_bytes(os.urandom(300_000))
    vmis_ok(lab_dir, "Copy-VMFile", "DemoVM", str(source), "/tmp/payload.bin", "-FileSource",
            "Host", "-Force")
    failed = run_vmis(lab_dir, "Copy-VMFile", "DemoVM", str(source) + ".missing", "/tmp/x",
                      "-FileSource", "Host")
    assert failed.code == 1
    got = metrics(lab_dir)
    assert value(got, "vmis_checkpoints", "vmis_checkpoints_total", vm="DemoVM",
                 status="Completed") == 1
    assert value(got, "vmis_checkpoint_freeze_seconds",
                 "vmis_checkpoint_freeze_seconds_count") == 1
    assert value(got, "vmis_copies", "vmis_copies_total", vm="DemoVM", file_source="Host",
                 status="Completed") == 1
    assert value(got, "vmis_copies", "vmis_copies_total", vm="DemoVM", file_source="Host",
                 status="Failed") == 1
    assert value(got, "vmis_copy_bytes", "vmis_copy_bytes_total", vm="DemoVM",
                 file_source="Host") == 300_000
    assert value(got, "vmis_copy_duration_seconds", "vmis_copy_duration_seconds_count",
                 file_source="Host") == 1
    copies = [json.loads(line) for line in vmis_ok(lab_dir, "Get-VMEvent", "-Type", "copy",
                                                     "--json").splitlines()]
    assert [e["Status"] for e in copies] == ["Running", "Completed", "Running", "Failed"]
    assert copies[0]["CopyId"] == copies[1]["CopyId"] != copies[2]["CopyId"]
    assert copies[1]["Bytes"] == 300_000 and copies[1]["FileSource"] == "Host"
    assert "ErrorType" in copies[3] and copies[3]["Error"]
