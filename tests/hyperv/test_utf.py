"""The kernel's UTF-16 <-> UTF-8 converters, quirks included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmis.hyperv.utf import utf8s_to_utf16s, utf16s_to_utf8s


def u16(text: str) -> bytes:
    return text.encode("utf-16-le")


def test_utf16_to_utf8_basic_and_stops_at_nul():
    assert utf16s_to_utf8s(u16("héllo\0junk"), 100, 100) == "héllo".encode()


def test_utf16_to_utf8_limits():
    assert utf16s_to_utf8s(u16("abcdef"), 3, 100) == b"abc"  # inlen in code units
    assert utf16s_to_utf8s(u16("abcdef"), 100, 4) == b"abcd"  # maxout in bytes


def test_character_that_does_not_fit_is_skipped_not_truncated():
    # "ab€c" with room for 3 bytes: € needs 3 and is skipped, c still fits
    assert utf16s_to_utf8s(u16("ab€c"), 100, 3) == b"abc"


def test_surrogate_pairs_and_lone_surrogates():
    assert utf16s_to_utf8s(u16("a😀b"), 100, 100) == "a😀b".encode()
    lone_high = b"a\0" + b"\x3d\xd8" + b"b\0"  # D83D then 'b'
    assert utf16s_to_utf8s(lone_high, 100, 100) == b"ab"
    lone_low = b"a\0" + b"\x00\xde" + b"b\0"  # DE00
    assert utf16s_to_utf8s(lone_low, 100, 100) == b"ab"
    assert utf16s_to_utf8s(b"\x3d\xd8", 100, 100) == b""  # high at the very end


def test_utf8_to_utf16_basic_limits():
    assert utf8s_to_utf16s("hé😀".encode(), 100, 100) == (u16("hé😀"), False)
    assert utf8s_to_utf16s(b"abc\0def", 100, 100) == (u16("abc"), False)
    assert utf8s_to_utf16s(b"abcdef", 100, 2) == (u16("ab"), False)
    assert utf8s_to_utf16s("a😀".encode(), 100, 2) == (u16("a"), False)  # pair needs 2 units


def test_utf8_to_utf16_rejects_invalid_input_keeping_partial_output():
    for bad in (b"ab\xff", b"ab\xc0\x80", b"ab\xed\xa0\x80", b"ab\xf4\x90\x80\x80", b"ab\xc3"):
        out, failed = utf8s_to_utf16s(bad, len(bad), 100)
        assert failed, bad
        assert out == u16("ab")


@given(st.text(alphabet=st.characters(exclude_characters="\0", exclude_categories=["Cs"]),
               max_size=60))
def test_round_trip_when_everything_fits(text: str):
    encoded, failed = utf8s_to_utf16s(text.encode(), len(text.encode()), 1000)
    assert not failed and encoded == u16(text)
    assert utf16s_to_utf8s(encoded, len(encoded) // 2, 1000) == text.encode()
