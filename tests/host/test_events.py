"""The host manager's event stream (vmis.host.events): ids, resume, and what publishes."""

from __future__ import annotations

import asyncio

import pytest

from support.pair import eventually, host_guest_pair
from vmis.errors import ConfigError, RemoteServiceError, ServiceUnavailable
from vmis.host.events import Event, EventHub, event_filter, first_id_now
from vmis.protocol import encode_json
from vmis.services.catalog import by_key
from vmis.services.kvp.host import KvpHost
from vmis.services.status import OperationalStatus
from vmis.services.timesync import TimeSyncOp


async def test_events_have_rising_ids_and_a_reader_resumes_after_the_last_it_saw():
    hub = EventHub(keep=5)
    first = [hub.publish("vm-added", vm_name=f"vm{n}") for n in range(3)]
    assert [e.id for e in first] == [1, 2, 3]
    resumed = hub.subscribe(after=1)
    assert [(await anext(resumed)).id for _ in range(2)] == [2, 3]
    hub.publish("vm-removed", vm_name="vm0")
    assert (await anext(resumed)).to_json()["Type"] == "vm-removed"


async def test_a_reader_asking_for_more_than_is_kept_is_told_how_many_it_missed():
    hub = EventHub(keep=3)
    for n in range(10):
        hub.publish("kvp", Items=n)
    late = hub.subscribe(after=2)
    gap = await anext(late)
    assert gap.type == "dropped" and gap.data == {"Dropped": 5}
    assert [(await anext(late)).data["Items"] for _ in range(3)] == [7, 8, 9]


async def test_a_reader_that_falls_behind_loses_events_and_is_told(monkeypatch):
    import vmis.host.events as events

    monkeypatch.setattr(events, "QUEUE", 2)
    hub = EventHub()
    slow = hub.subscribe()
    for n in range(5):
        hub.publish("kvp", Items=n)
    assert [(await anext(slow)).data["Items"] for _ in range(2)] == [0, 1]
    lost = await anext(slow)
    assert lost.type == "dropped" and lost.data == {"Dropped": 3} and hub.dropped == 3


async def test_what_a_vm_does_reaches_the_stream(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        seen = pair.manager.events.subscribe(after=0)
        received: list[dict] = []

        async def read() -> None:
            async for event in seen:
                received.append(event.to_json())

        reader = asyncio.create_task(read())

        def has(**want):
            return any(all(e.get(k) == v for k, v in want.items()) for e in received)

        try:
            await eventually(lambda: has(Type="host", State="Up"))
            await eventually(lambda: has(Type="service", Name="Heartbeat",
                                         PrimaryStatusDescription="OK"))
            await pair.manager.set_enabled(["DemoVM"], ["VSS"], False)
            await eventually(lambda: has(Type="settings", Name="VSS", Enabled=False,
                                         VMName="DemoVM"))
            await eventually(lambda: has(Type="service", Name="VSS", Enabled=False))
            await pair.manager.service(KvpHost).set(["DemoVM"], "role", "db")
            await eventually(lambda: has(Type="kvp", Pool="External", Key="role",
                                         Delivered=True))
            await pair._stop_agent()
            await eventually(lambda: has(Type="service", Name="Heartbeat",
                                         PrimaryStatusDescription="Lost Communication"),
                             timeout=15)
            await pair.restart_agent()
            last = max(e["Id"] for e in received)
            await eventually(lambda: any(e["Id"] > last and e["Type"] == "service"
                                         and e["PrimaryStatusDescription"] == "OK"
                                         for e in received), timeout=15)
            ids = [e["Id"] for e in received]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
        finally:
            reader.cancel()
            seen.close()


async def test_filters_take_vm_wildcards_and_types_and_always_pass_dropped():
    hub = EventHub()
    accept = event_filter(["web*", "DB01"], ["Service", "heartbeat"])
    hub.publish("service", vm_name="Web7")
    hub.publish("service", vm_name="db01")
    hub.publish("kvp", vm_name="web1")
    hub.publish("service", vm_name="mail")
    hub.publish("host", State="Up")
    assert [e.vm_name for e in hub.recent(0, accept)] == ["Web7", "db01"]
    assert accept(Event(1, "dropped", 0.0))
    assert [e.type for e in hub.recent(0, event_filter(types=["host"]))] == ["host"]
    with pytest.raises(ConfigError, match="no event type bogus; the types are host, "):
        event_filter(types=["service", "bogus"])


async def test_ids_rise_across_restarts_and_a_reader_from_the_last_run_misses_nothing():
    before = EventHub(first=first_id_now())
    last = before.publish("host", State="Down").id
    after = EventHub(first=first_id_now())
    assert after.first_id > last
    for n in range(3):
        after.publish("kvp", Items=n)
    resumed = after.subscribe(after=last)
    # nothing happened between the runs: no "dropped", just the new run's events
    assert [(await anext(resumed)).data for _ in range(3)] == [{"Items": n} for n in range(3)]
    # an id this hub never reached (another manager's): everything it keeps
    foreign = after.subscribe(after=after.last_id + 1000)
    assert (await anext(foreign)).data == {"Items": 0}


async def test_closing_the_hub_ends_every_reader_after_what_it_queued():
    hub = EventHub()
    reader = hub.subscribe()
    waiting = asyncio.ensure_future(anext(hub.subscribe()))
    await asyncio.sleep(0)
    hub.publish("host", State="Down")
    hub.close()
    assert (await anext(reader)).data == {"State": "Down"}
    with pytest.raises(StopAsyncIteration):
        await anext(reader)
    assert (await waiting).data == {"State": "Down"}
    late = hub.subscribe(after=0)
    assert (await anext(late)).type == "host"
    with pytest.raises(StopAsyncIteration):
        await anext(late)
    assert hub.subscribers == 0


async def test_a_watcher_sees_every_event_when_a_reader_loses_some(monkeypatch):
    import vmis.host.events as events

    monkeypatch.setattr(events, "QUEUE", 1)
    hub = EventHub()
    hub.subscribe()
    seen: list[int] = []
    hub.watch(lambda event: seen.append(event.data["Items"]))
    for n in range(4):
        hub.publish("kvp", Items=n)
    assert seen == [0, 1, 2, 3] and hub.dropped == 3


async def test_application_health_reaches_the_stream_and_the_last_status(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        seen = pair.manager.events.subscribe(after=0, accept=event_filter(types=["service"]))
        checks = pair.root / "etc/vmis/health.d"
        checks.mkdir(parents=True)
        bad = checks / "20-db"
        bad.write_text("#!/bin/sh\nexit 3\n")
        bad.chmod(0o755)
        async with asyncio.timeout(10):
            async for event in seen:
                if event.data.get("SecondaryStatusDescription") == "Application Critical":
                    break
        assert event.data["Name"] == "Heartbeat" and "20-db" in event.data["Reason"]
        row = pair.session.last_status(by_key("heartbeat"))
        assert row.secondary is OperationalStatus.APPLICATION_CRITICAL
        seen.close()


async def test_requests_are_counted_by_service_and_outcome(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        spec = by_key("timesync")
        stats = pair.manager.requests["timesync"]
        await eventually(lambda: stats.outcomes["ok"] > 0)  # the first burst
        before = dict(stats.outcomes), sum(stats.latency.counts)
        await pair.session.request(spec, TimeSyncOp.SAMPLE, encode_json({"seq": 0}))
        with pytest.raises(RemoteServiceError):
            await pair.session.request(spec, 99)
        await pair.manager.set_enabled(["DemoVM"], ["Time Synchronization"], False)
        with pytest.raises(ServiceUnavailable):
            await pair.session.request(spec, TimeSyncOp.SAMPLE, encode_json({"seq": 0}))
        outcomes, sent = before
        delta = {k: stats.outcomes[k] - outcomes[k] for k in outcomes}
        # the time sync loop may send (or be refused sending) meanwhile: at least ours
        assert delta["ok"] >= 1 and delta["unavailable"] >= 1
        assert delta["refused"] == 1  # op 99: only ours
        # every request sent has a latency, one not sent (unavailable) has none
        assert sum(stats.latency.counts) - sent == (delta["ok"] + delta["refused"]
                                                    + delta["timeout"] + delta["channel"])
        assert stats.latency.cumulative()[-1] == sum(stats.latency.counts)
        assert stats.latency.sum > 0
        assert pair.manager.requests["kvp"] is not stats
