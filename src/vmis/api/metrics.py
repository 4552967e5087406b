"""Prometheus metrics at ``GET /metrics`` (docs/metrics.md), read-only.

:class:`ManagerCollector` reads the host manager's state when Prometheus
scrapes, and only then: the services' host halves already keep what the
metrics show (heartbeat monitors, time sync monitors, KVP pools, the
sessions' request counts of vmis.host.request_stats), so nothing runs per
beat or per request for the metrics' sake. Copies and checkpoints are
tallied from the event stream as they end (:class:`Tallies`, a watcher of
the hub), the one thing no host half keeps.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest

import vmis
from vmis.api.docs import text_response
from vmis.api.exposition import Family, label, render
from vmis.host.events import Event
from vmis.host.manager import HostManager
from vmis.host.request_stats import BUCKETS, Buckets
from vmis.services.catalog import CATALOG
from vmis.services.heartbeat.host import HeartbeatHost
from vmis.services.host_half import Contact
from vmis.services.kvp import pool_name
from vmis.services.kvp.host import KvpHost
from vmis.services.timesync.host import TimeSyncHost

__all__ = ["ManagerCollector", "Metrics", "Tallies", "router"]

router = APIRouter()

#: buckets of the copy durations, seconds
COPY_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: buckets of the checkpoints' freeze durations, seconds (VSS's own limit is 10 s)
FREEZE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: the text format vmis.api.exposition writes, which every Prometheus reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONTACTS = (Contact.OK, Contact.NO_CONTACT, Contact.LOST)


class Tallies:
    """Copies and checkpoints that ended, counted from their last event (a hub watcher)."""

    def __init__(self) -> None:
        #: (vm, file source, status) -> copies
        self.copies: dict[tuple[str, str, str], int] = {}
        #: (vm, file source) -> bytes of completed copies
        self.copy_bytes: dict[tuple[str, str], int] = {}
        #: file source -> durations of completed copies
        self.copy_seconds: dict[str, Buckets] = {}
        #: (vm, status) -> checkpoints
        self.checkpoints: dict[tuple[str, str], int] = {}
        #: how long guests stayed frozen, as they measured it
        self.freeze_seconds = Buckets(FREEZE_BUCKETS)

    def __call__(self, event: Event) -> None:
        kind = event.type
        if kind not in ("copy", "checkpoint", "vm-removed") or event.vm_name is None:
            return
        vm, data = event.vm_name, event.data
        status = data.get("Status")
        if kind == "copy" and status != "Running":
            source = str(data.get("FileSource"))
            key = (vm, source, str(status))
            self.copies[key] = self.copies.get(key, 0) + 1
            if status == "Completed":
                self.copy_bytes[vm, source] = (self.copy_bytes.get((vm, source), 0)
                                               + int(data.get("Bytes") or 0))
                seconds = self.copy_seconds.setdefault(source, Buckets(COPY_BUCKETS))
                seconds.observe(float(data.get("Seconds") or 0.0))
        elif kind == "checkpoint" and status != "Running":
            key2 = (vm, str(status))
            self.checkpoints[key2] = self.checkpoints.get(key2, 0) + 1
            if isinstance(data.get("FrozenSeconds"), int | float):
                self.freeze_seconds.observe(float(data["FrozenSeconds"]))
        elif kind == "vm-removed":
            # a removed VM's series end with it
            for table in (self.copies, self.copy_bytes, self.checkpoints):
                keys: list[Any] = [k for k in table if k[0] == vm]
                for k in keys:
                    del table[k]


class ManagerCollector:
    """Every ``vmis_`` metric, read from the manager at scrape time."""

    def __init__(self, manager: HostManager, tallies: Tallies) -> None:
        self.manager = manager
        self.tallies = tallies

    def collect(self) -> list[Family]:
        return [*self._vms(), *self._requests(), *self._activity(), *self._events()]

    def _vms(self) -> list[Family]:
        manager = self.manager
        sessions = sorted(manager.sessions.values(), key=lambda s: s.vm.name.lower())
        now = time.monotonic()
        vms = Family("vmis_vms", "gauge", "VMs registered with the host manager")
        vms.add("", len(sessions))
        connected = Family("vmis_vm_connected", "gauge",
                           "1 while a channel to the VM's guest agent is open")
        agent = Family("vmis_guest_agent_info", "gauge",
                       "The VM's guest agent, as it last connected (always 1)")
        enabled = Family("vmis_integration_service_enabled", "gauge",
                         "1 when the integration service is enabled on the host")
        primary = Family("vmis_integration_service_primary_status", "gauge",
                         "PrimaryOperationalStatus code, Hyper-V's (2 OK, 12 No Contact, 13 Lost "
                         "Communication, ...; none while the VM is off)")
        secondary = Family("vmis_integration_service_secondary_status", "gauge",
                           "SecondaryOperationalStatus code (Heartbeat: 2 OK, 32782 Application "
                           "Critical)")
        heartbeat = Family("vmis_heartbeat_state", "gauge",
                           "1 for the VM's heartbeat state (Get-VM's Heartbeat), 0 for the others")
        gap = Family("vmis_heartbeat_gap_seconds", "gauge",
                     "Seconds between the VM's last two heartbeats")
        age = Family("vmis_heartbeat_age_seconds", "gauge", "Seconds since the VM's last heartbeat")
        offset = Family("vmis_timesync_offset_seconds", "gauge",
                        "Guest clock minus host clock at the last time sync sample")
        rtt = Family("vmis_timesync_round_trip_seconds", "gauge",
                     "Round trip of the last time sync sample")
        syncs = Family("vmis_timesync_syncs", "counter",
                       "Time sync bursts completed since the host manager started")
        pool = Family("vmis_kvp_pool_items", "gauge",
                      "Items in a KVP pool, as the guest last pushed it")
        pending = Family("vmis_kvp_pending_writes", "gauge",
                         "Host KVP writes (Set-/Remove-VMKvp) the guest has not taken yet")
        specs = [(spec, label("service", spec.host_name or spec.key))
                 for spec in CATALOG.host_services]
        states = [(word, label("state", word)) for word in CONTACTS]
        pools: dict[Any, str] = {}
        for session in sessions:
            vm = label("vm", session.vm.name)
            connected.add(vm, 1 if session.connected else 0)
            version = session.agent.get("version")
            if version is not None:
                agent.add(f"{vm},{label('version', str(version))},"
                          f"{label('os', str(session.agent.get('os', '')))}", 1)
            for spec, service in specs:
                row = session.last_status(spec)
                both = f"{vm},{service}"
                enabled.add(both, 1 if row.enabled else 0)
                if row.primary is not None:
                    primary.add(both, int(row.primary))
                if row.secondary is not None:
                    secondary.add(both, int(row.secondary))
            state = session.contact(now)
            for word, text in states:
                heartbeat.add(f"{vm},{text}", 1 if word == state else 0)
            monitor = session.part(HeartbeatHost).monitor
            if monitor.gap is not None:
                gap.add(vm, monitor.gap)
            if monitor.last_beat is not None:
                age.add(vm, max(0.0, now - monitor.last_beat))
            clock = session.part(TimeSyncHost).monitor
            if clock.last_sample is not None:
                offset.add(vm, clock.last_sample.offset_ns / 1e9)
                rtt.add(vm, clock.last_sample.rtt_ns / 1e9)
            syncs.add(vm, clock.syncs)
            kvp = session.part(KvpHost)
            for which, items in kvp.pools.items():
                if which not in pools:
                    pools[which] = label("pool", pool_name(which))
                pool.add(f"{vm},{pools[which]}", len(items))
            pending.add(vm, kvp.pending)
        return [vms, connected, agent, enabled, primary, secondary, heartbeat, gap, age, offset,
                rtt, syncs, pool, pending]

    def _requests(self) -> list[Family]:
        count = Family("vmis_channel_requests", "counter",
                       "Requests of the host halves to guests, by service and outcome")
        latency = Family("vmis_channel_request_duration_seconds", "histogram",
                         "From sending a request to its answer or failure, by service")
        for key, stats in self.manager.requests.items():
            service = label("service", key)
            for outcome, n in stats.outcomes.items():
                count.add(f"{service},{label('outcome', outcome)}", n)
            latency.histogram(service, BUCKETS, stats.latency.cumulative(), stats.latency.sum)
        return [count, latency]

    def _activity(self) -> list[Family]:
        t = self.tallies
        copies = Family("vmis_copies", "counter", "Copy-VMFile runs that ended, by status")
        for (vm, source, status), n in sorted(t.copies.items()):
            copies.add(f"{label('vm', vm)},{label('file_source', source)},"
                       f"{label('status', status)}", n)
        copy_bytes = Family("vmis_copy_bytes", "counter", "Bytes of completed Copy-VMFile runs")
        for (vm, source), n in sorted(t.copy_bytes.items()):
            copy_bytes.add(f"{label('vm', vm)},{label('file_source', source)}", n)
        seconds = Family("vmis_copy_duration_seconds", "histogram",
                         "Durations of completed Copy-VMFile runs")
        for source, hist in sorted(t.copy_seconds.items()):
            seconds.histogram(label("file_source", source), hist.bounds, hist.cumulative(),
                              hist.sum)
        checkpoints = Family("vmis_checkpoints", "counter",
                             "Checkpoint-VM runs that ended, by status")
        for (vm, status), n in sorted(t.checkpoints.items()):
            checkpoints.add(f"{label('vm', vm)},{label('status', status)}", n)
        freeze = Family("vmis_checkpoint_freeze_seconds", "histogram",
                        "How long checkpoints kept guests frozen, as the guests measured it")
        hist = t.freeze_seconds
        freeze.histogram("", hist.bounds, hist.cumulative(), hist.sum)
        return [copies, copy_bytes, seconds, checkpoints, freeze]

    def _events(self) -> list[Family]:
        hub = self.manager.events
        published = Family("vmis_events", "counter", "Events published on the event stream")
        published.add("", hub.last_id - hub.first_id + 1)
        dropped = Family("vmis_events_dropped", "counter",
                         "Events the stream's readers lost because they fell behind")
        dropped.add("", hub.dropped)
        readers = Family("vmis_event_subscribers", "gauge",
                         "Readers following the event stream now")
        readers.add("", hub.subscribers)
        build = Family("vmis_build_info", "gauge", "The host manager's vmis version (always 1)")
        build.add(label("version", vmis.__version__), 1)
        return [published, dropped, readers, build]


class Metrics:
    """What ``/metrics`` serves: the manager's metrics, then its process's (CPU,
    memory, open files: prometheus-client's ``process_*``)."""

    def __init__(self, manager: HostManager) -> None:
        tallies = Tallies()
        manager.events.watch(tallies)
        self.collector = ManagerCollector(manager, tallies)
        self.process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.process)

    def exposition(self) -> bytes:
        return (render(self.collector.collect()).encode()
                + generate_latest(self.process))


@router.get("/metrics", response_model=None, responses=text_response(
    "the metrics in Prometheus' text format 0.0.4 (docs/metrics.md)", CONTENT_TYPE))
async def metrics(request: Request) -> Response:
    # On the event loop, not in a thread: the collector reads state the loop changes.
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
