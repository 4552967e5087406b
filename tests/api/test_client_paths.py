"""api_path and query_string: a request's path and query, percent-encoded exactly as urllib
would, whether or not they needed urllib (the command line's common path does without it)."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from hypothesis import given
from hypothesis import strategies as st

from vmis.api.client import api_path, query_string


@given(st.lists(st.text(), max_size=4))
def test_any_names_are_encoded_as_urllib_encodes_them(segments):
    assert api_path(*segments) == "".join("/" + quote(s, safe="") for s in segments)


def test_plain_and_awkward_names():
    assert api_path() == ""
    assert api_path("vms", "DemoVM", "copy") == "/vms/DemoVM/copy"
    assert api_path("vms", "a b/c#d?%", "kvp") == "/vms/a%20b%2Fc%23d%3F%25/kvp"
    assert api_path("vms", "caf\u00e9") == "/vms/caf%C3%A9"


_VALUES = st.one_of(st.text(), st.integers(), st.booleans(), st.floats(allow_nan=False))


@given(st.dictionaries(st.text(), st.one_of(_VALUES, st.lists(_VALUES, max_size=3)),
                       max_size=4))
def test_any_query_is_encoded_as_urlencode_encodes_it(query):
    assert query_string(query) == urlencode(query, doseq=True)


def test_plain_and_awkward_queries():
    assert query_string({"name": ["Heartbeat", "VSS"], "limit": 5}) == \
        "name=Heartbeat&name=VSS&limit=5"
    assert query_string({"name": "Guest Service Interface"}) == "name=Guest+Service+Interface"
