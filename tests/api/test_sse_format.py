"""The event stream's wire format (vmis.api.sse) and the metrics' text format
(vmis.api.exposition), each read back by another implementation of it."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from vmis.api.exposition import Family, label, render
from vmis.api.sse import (
    KEEPALIVE_COMMENT,
    EncodedEvents,
    SseDecoder,
    encode_event,
    retry_field,
)
from vmis.host.events import Event


def decode(data: bytes) -> tuple[list, SseDecoder]:
    decoder = SseDecoder()
    events = []
    for line in data.decode().split("\n"):
        event = decoder.feed(line)
        if event is not None:
            events.append(event)
    return events, decoder


def test_an_event_is_its_id_its_type_and_its_json_on_one_line():
    event = Event(41, "service", 1.5, "web\n01", "id-1",
                  {"Name": "VSS", "Reason": "two\nlines", "Enabled": False})
    block = encode_event(event)
    assert block.startswith(b"id: 41\nevent: service\ndata: {") and block.endswith(b"}\n\n")
    assert block.count(b"\n") == 4  # newlines inside the JSON are escaped
    stream = retry_field() + KEEPALIVE_COMMENT + block + encode_event(
        Event(41, "dropped", 2.0, data={"Dropped": 3}))
    (first, gap), decoder = decode(stream)
    assert (first.type, first.id) == ("service", "41")
    assert first.json() == {"Id": 41, "Type": "service", "Time": 1.5, "VMName": "web\n01",
                            "VMId": "id-1", "Name": "VSS", "Reason": "two\nlines",
                            "Enabled": False}
    # a dropped event has no id: a client resuming after it asks for what it lost
    assert (gap.type, gap.id, gap.json()["Dropped"]) == ("dropped", None, 3)
    assert decoder.last_id == "41"


def test_the_decoder_follows_the_standard():
    events, decoder = decode(b"data:a\ndata: b\n: note\nid: 7\n\nevent: x\n\ndata\n\n"
                             b"id: bad\x00\ndata: c\n\n")
    assert [(e.type, e.data, e.id) for e in events] == [("message", "a\nb", "7"),
                                                        ("message", "", None),
                                                        ("message", "c", None)]
    assert decoder.last_id == "7"  # an id holding NUL is ignored; "event: x" had no data


def test_the_exposition_reads_back_with_prometheus_clients_parser():
    names = ['we"b\\01', "db\nx", "plain"]
    gauge = Family("vmis_test_state", "gauge", "A gauge")
    counter = Family("vmis_test_requests", "counter", "A counter")
    hist = Family("vmis_test_seconds", "histogram", "A histogram")
    for n, name in enumerate(names):
        vm = label("vm", name)
        gauge.add(f"{vm},{label('state', 'Ok')}", n + 0.25)
        counter.add(vm, n)
        hist.histogram(vm, (0.1, 1.0), [n, n + 1, n + 2], 1.5 * n)
    empty = Family("vmis_test_empty", "gauge", "Nothing yet")
    plain = Family("vmis_test_nan", "gauge", "No labels")
    plain.add("", float("nan"))
    parsed = {f.name: f for f in text_string_to_metric_families(
        render([gauge, counter, hist, empty, plain]))}
    assert parsed["vmis_test_state"].type == "gauge"
    assert [(s.labels["vm"], s.value) for s in parsed["vmis_test_state"].samples] == [
        (name, n + 0.25) for n, name in enumerate(names)]
    assert parsed["vmis_test_requests"].type == "counter"
    assert [s.name for s in parsed["vmis_test_requests"].samples] == ["vmis_test_requests_total"] * 3
    samples = [(s.name, s.labels.get("le"), s.value) for s in parsed["vmis_test_seconds"].samples
               if s.labels["vm"] == "plain"]
    assert samples == [
        ("vmis_test_seconds_bucket", "0.1", 2), ("vmis_test_seconds_bucket", "1.0", 3),
        ("vmis_test_seconds_bucket", "+Inf", 4), ("vmis_test_seconds_sum", None, 3.0),
        ("vmis_test_seconds_count", None, 4)]
    assert parsed["vmis_test_empty"].samples == []
    assert json.dumps(parsed["vmis_test_nan"].samples[0].value) == "NaN"


def test_an_event_is_encoded_once_for_every_stream():
    encode = EncodedEvents(size=2)
    one, two, three = (Event(n, "kvp", 0.0, data={"Items": n}) for n in (1, 2, 3))
    block = encode(one)
    assert encode(one) is block and block == encode_event(one)
    # another hub's event with the same id is not taken for it
    assert encode(Event(1, "kvp", 0.0, data={"Items": 9})) != block
    encode(two)
    encode(three)
    assert encode(one) is not block  # evicted: the cache holds the newest
    gap = Event(3, "dropped", 0.0, data={"Dropped": 1})
    assert encode(gap) == encode_event(gap) and encode(three) == encode_event(three)
