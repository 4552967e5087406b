"""The host manager's event stream (vmis.host.events): ids, resume, and what publishes."""

from __future__ import annotations

import asyncio

from support.pair import eventually, host_guest_pair

from vmis.host.events import EventHub
from vmis.services.kvp.host import KvpHost


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
