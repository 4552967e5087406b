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
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import vmis
from vmis.host.events import Event
from vmis.host.manager import HostManager
from vmis.host.request_stats import BUCKETS
from vmis.services.catalog import CATALOG
from vmis.services.heartbeat.host import HeartbeatHost
from vmis.services.host_half import Contact
from vmis.services.kvp import pool_name
from vmis.services.kvp.host import KvpHost
from vmis.services.timesync.host import TimeSyncHost

__all__ = ["ManagerCollector", "Tallies", "metrics_registry", "router"]

router = APIRouter()

#: buckets of the copy durations, seconds
COPY_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: buckets of the checkpoints' freeze durations, seconds (VSS's own limit is 10 s)
FREEZE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTACTS = (Contact.OK, Contact.NO_CONTACT, Contact.LOST)


class Histogram:
    """Observations in fixed buckets, turned into a Prometheus histogram when scraped."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        total, out = 0, list[tuple[str, float]]()
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class Tallies:
    """Copies and checkpoints that ended, counted from their last event (a hub watcher)."""

    def __init__(self) -> None:
        #: (vm, file source, status) -> copies
        self.copies: dict[tuple[str, str, str], int] = {}
        #: (vm, file source) -> bytes of completed copies
        self.copy_bytes: dict[tuple[str, str], int] = {}
        #: file source -> durations of completed copies
        self.copy_seconds: dict[str, Histogram] = {}
        #: (vm, status) -> checkpoints
        self.checkpoints: dict[tuple[str, str], int] = {}
        #: how long guests stayed frozen, as they measured it
        self.freeze_seconds = Histogram(FREEZE_BUCKETS)

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
                seconds = self.copy_seconds.setdefault(source, Histogram(COPY_BUCKETS))
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


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


class ManagerCollector(Collector):
    """Every ``vmis_`` metric, read from the manager at scrape time."""

    def __init__(self, manager: HostManager, tallies: Tallies) -> None:
        self.manager = manager
        self.tallies = tallies

    def collect(self) -> Iterator[Metric]:
        yield from self._vms()
        yield from self._requests()
        yield from self._activity()
        yield from self._events()

    def _vms(self) -> Iterator[Metric]:
        manager = self.manager
        sessions = sorted(manager.sessions.values(), key=lambda s: s.vm.name.lower())
        now = time.monotonic()
        vms = _gauge("vmis_vms", "VMs registered with the host manager")
        vms.add_metric([], len(sessions))
        connected = _gauge("vmis_vm_connected", "1 while a channel to the VM's guest is open",
                           ("vm",))
        agent = InfoMetricFamily("vmis_guest_agent", "The VM's guest agent (last connection)",
                                 labels=["vm"])
        enabled = _gauge("vmis_integration_service_enabled",
                         "1 when the integration service is enabled on the host",
                         ("vm", "service"))
        primary = _gauge("vmis_integration_service_primary_status",
                         "PrimaryOperationalStatus code (Hyper-V's; 2 OK, 12 No Contact, 13 Lost "
                         "Communication; none while the VM is off)", ("vm", "service"))
        secondary = _gauge("vmis_integration_service_secondary_status",
                           "SecondaryOperationalStatus code (Heartbeat: 2 OK, 32782 Application "
                           "Critical)", ("vm", "service"))
        heartbeat = _gauge("vmis_heartbeat_state",
                           "1 for the VM's heartbeat state (Get-VM's Heartbeat), 0 for the others",
                           ("vm", "state"))
        gap = _gauge("vmis_heartbeat_gap_seconds", "Seconds between the last two heartbeats",
                     ("vm",))
        age = _gauge("vmis_heartbeat_age_seconds", "Seconds since the last heartbeat", ("vm",))
        offset = _gauge("vmis_timesync_offset_seconds",
                        "Guest clock minus host clock at the last time sync sample", ("vm",))
        rtt = _gauge("vmis_timesync_round_trip_seconds",
                     "Round trip of the last time sync sample", ("vm",))
        syncs = _counter("vmis_timesync_syncs", "Time sync bursts completed", ("vm",))
        pool = _gauge("vmis_kvp_pool_items", "Items in a KVP pool as the guest last pushed it",
                      ("vm", "pool"))
        pending = _gauge("vmis_kvp_pending_writes",
                         "Host KVP writes (Set-/Remove-VMKvp) the guest has not taken yet",
                         ("vm",))
        specs = [(spec, spec.host_name or spec.key) for spec in CATALOG.host_services]
        for session in sessions:
            name = session.vm.name
            connected.add_metric([name], 1 if session.connected else 0)
            version = session.agent.get("version")
            if version is not None:
                agent.add_metric([name], {"version": str(version),
                                          "os": str(session.agent.get("os", ""))})
            off = session.powered_off and not session.connected
            for spec, label in specs:
                row = session.status(spec, off=off)
                enabled.add_metric([name, label], 1 if row.enabled else 0)
                if row.primary is not None:
                    primary.add_metric([name, label], int(row.primary))
                if row.secondary is not None:
                    secondary.add_metric([name, label], int(row.secondary))
            state = session.contact(now)
            for word in CONTACTS:
                heartbeat.add_metric([name, word], 1 if word == state else 0)
            monitor = session.part(HeartbeatHost).monitor
            if monitor.gap is not None:
                gap.add_metric([name], monitor.gap)
            if monitor.last_beat is not None:
                age.add_metric([name], max(0.0, now - monitor.last_beat))
            clock = session.part(TimeSyncHost).monitor
            if clock.last_sample is not None:
                offset.add_metric([name], clock.last_sample.offset_ns / 1e9)
                rtt.add_metric([name], clock.last_sample.rtt_ns / 1e9)
            syncs.add_metric([name], clock.syncs)
            kvp = session.part(KvpHost)
            for which, items in kvp.pools.items():
                pool.add_metric([name, pool_name(which)], len(items))
            pending.add_metric([name], kvp.pending)
        yield from (vms, connected, agent, enabled, primary, secondary, heartbeat, gap, age,
                    offset, rtt, syncs, pool, pending)

    def _requests(self) -> Iterator[Metric]:
        count = _counter("vmis_channel_requests",
                         "Requests of the host halves to guests, by service and outcome",
                         ("service", "outcome"))
        latency = HistogramMetricFamily(
            "vmis_channel_request_duration_seconds",
            "From sending a request to its answer (or failure), by service",
            labels=["service"])
        bounds = [*map(str, BUCKETS), "+Inf"]
        for key, stats in self.manager.requests.items():
            for outcome, n in stats.outcomes.items():
                count.add_metric([key, outcome], n)
            latency.add_metric([key], list(zip(bounds, stats.cumulative(), strict=True)),
                               stats.seconds)
        yield count
        yield latency

    def _activity(self) -> Iterator[Metric]:
        t = self.tallies
        copies = _counter("vmis_copies", "Copy-VMFile runs that ended, by outcome",
                          ("vm", "file_source", "status"))
        for (vm, source, status), n in sorted(t.copies.items()):
            copies.add_metric([vm, source, status], n)
        copy_bytes = _counter("vmis_copy_bytes", "Bytes of completed Copy-VMFile runs",
                              ("vm", "file_source"))
        for (vm, source), n in sorted(t.copy_bytes.items()):
            copy_bytes.add_metric([vm, source], n)
        seconds = HistogramMetricFamily("vmis_copy_duration_seconds",
                                        "Durations of completed Copy-VMFile runs",
                                        labels=["file_source"])
        for source, hist in sorted(t.copy_seconds.items()):
            seconds.add_metric([source], hist.buckets(), hist.sum)
        checkpoints = _counter("vmis_checkpoints", "Checkpoint-VM runs that ended, by status",
                               ("vm", "status"))
        for (vm, status), n in sorted(t.checkpoints.items()):
            checkpoints.add_metric([vm, status], n)
        freeze = HistogramMetricFamily("vmis_checkpoint_freeze_seconds",
                                       "How long checkpoints kept guests frozen")
        freeze.add_metric([], t.freeze_seconds.buckets(), t.freeze_seconds.sum)
        yield from (copies, copy_bytes, seconds, checkpoints, freeze)

    def _events(self) -> Iterator[Metric]:
        hub = self.manager.events
        published = _counter("vmis_events", "Events published on the event stream")
        published.add_metric([], hub.last_id - hub.first_id + 1)
        dropped = _counter("vmis_events_dropped",
                           "Events stream readers lost because they fell behind")
        dropped.add_metric([], hub.dropped)
        readers = _gauge("vmis_event_subscribers", "Readers following the event stream now")
        readers.add_metric([], hub.subscribers)
        info = InfoMetricFamily("vmis_build", "The host manager's vmis version")
        info.add_metric([], {"version": vmis.__version__})
        yield from (published, dropped, readers, info)


def metrics_registry(manager: HostManager) -> CollectorRegistry:
    """A registry of the manager's metrics and its process's (CPU, memory, files)."""
    tallies = Tallies()
    manager.events.watch(tallies)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ManagerCollector(manager, tallies))
    ProcessCollector(registry=registry)
    return registry


@router.get("/metrics", response_model=None)
async def metrics(request: Request) -> Response:
    # On the event loop, not in a thread: the collector reads state the loop changes.
    registry: CollectorRegistry = request.app.state.metrics
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)
