"""The kernel's UTF-16 <-> UTF-8 converters (``fs/nls/nls_base.c``), quirks included.

The host speaks UTF-16LE, the daemons UTF-8; ``hv_utils`` converts between
them with ``utf16s_to_utf8s`` and ``utf8s_to_utf16s``.  The emulator must do
exactly what those do, so that what a daemon sees in tests is what it sees on
Hyper-V:

* conversion stops at a NUL, at the input length, or when the output is full;
* a character that does not fit the remaining output is *skipped* (a later,
  shorter one may still fit);
* unpaired surrogates in UTF-16 are skipped;
* invalid UTF-8 (bad continuation, overlong form, surrogate, > U+10FFFF) makes
  ``utf8s_to_utf16s`` fail as a whole (``-EINVAL``), which the KVP driver turns
  into HV_E_FAIL for the host.
"""

from __future__ import annotations

__all__ = ["utf8s_to_utf16s", "utf16s_to_utf8s"]

_UNICODE_MAX = 0x10FFFF
_PLANE_SIZE = 0x10000
_SURROGATE_MASK = 0xFFFFF800
_SURROGATE_PAIR = 0x0000D800
_SURROGATE_LOW = 0x00000400
_SURROGATE_BITS = 0x000003FF

# (cmask, cval, lmask, lval) per sequence length 1..6, as the kernel's utf8_table.
_UTF8_TABLE = (
    (0x80, 0x00, 0x7F, 0),
    (0xE0, 0xC0, 0x7FF, 0x80),
    (0xF0, 0xE0, 0xFFFF, 0x800),
    (0xF8, 0xF0, 0x1FFFFF, 0x10000),
    (0xFC, 0xF8, 0x3FFFFFF, 0x200000),
    (0xFE, 0xFC, 0x7FFFFFFF, 0x4000000),
)


def _is_surrogate(u: int) -> bool:
    return (u & _SURROGATE_MASK) == _SURROGATE_PAIR


def _utf32_to_utf8(u: int, maxout: int) -> bytes | None:
    if u > _UNICODE_MAX or _is_surrogate(u):
        return None
    encoded = chr(u).encode("utf-8")
    return encoded if len(encoded) <= maxout else None


def utf16s_to_utf8s(data: bytes, inlen: int, maxout: int) -> bytes:
    """Convert UTF-16LE ``data`` to UTF-8 as the kernel does.

    :param data: the UTF-16LE field.
    :param inlen: at most this many code units are read.
    :param maxout: at most this many bytes are produced (no NUL is added).
    :return: the UTF-8 bytes.
    """
    units = [
        int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data) - 1, 2)
    ][: max(inlen, 0)]
    out = bytearray()
    i = 0
    n = len(units)
    while i < n and maxout > 0:
        u = units[i]
        if u == 0:
            break
        i += 1
        if u > 0x7F:
            if _is_surrogate(u):
                if u & _SURROGATE_LOW:
                    continue  # a lone low surrogate: ignored
                if i >= n:
                    break
                v = units[i]
                if not _is_surrogate(v) or not v & _SURROGATE_LOW:
                    continue  # a high surrogate without its low half: ignored
                u = _PLANE_SIZE + ((u & _SURROGATE_BITS) << 10) + (v & _SURROGATE_BITS)
                i += 1
            encoded = _utf32_to_utf8(u, maxout)
            if encoded is not None:  # does not fit: ignored, as in the kernel
                out += encoded
                maxout -= len(encoded)
        else:
            out.append(u)
            maxout -= 1
    return bytes(out)


def _utf8_to_utf32(s: bytes, pos: int, inlen: int) -> tuple[int, int] | None:
    c0 = s[pos]
    value = c0
    for nc, (cmask, cval, lmask, lval) in enumerate(_UTF8_TABLE, 1):
        if (c0 & cmask) == cval:
            value &= lmask
            if value < lval or value > _UNICODE_MAX or _is_surrogate(value):
                return None
            return value, nc
        if inlen <= nc:
            return None
        c = (s[pos + nc] ^ 0x80) & 0xFF
        if c & 0xC0:
            return None
        value = (value << 6) | c
    return None


def utf8s_to_utf16s(data: bytes, inlen: int, maxout: int) -> tuple[bytes, bool]:
    """Convert UTF-8 ``data`` to UTF-16LE as the kernel does.

    :param data: the UTF-8 bytes.
    :param inlen: at most this many bytes are read (the kernel passes ``strlen``).
    :param maxout: at most this many code units are produced (no NUL is added).
    :return: the UTF-16LE bytes written, and whether the conversion failed
        (``-EINVAL`` in the kernel, which has then written the bytes before
        the bad sequence into its output already).
    """
    out = bytearray()
    pos = 0
    inlen = min(inlen, len(data))
    while inlen > 0 and maxout > 0 and data[pos] != 0:
        if data[pos] & 0x80:
            decoded = _utf8_to_utf32(data, pos, inlen)
            if decoded is None:
                return bytes(out), True
            u, size = decoded
            pos += size
            inlen -= size
            if u >= _PLANE_SIZE:
                if maxout < 2:
                    break
                u -= _PLANE_SIZE
                out += (_SURROGATE_PAIR | ((u >> 10) & _SURROGATE_BITS)).to_bytes(2, "little")
                out += (_SURROGATE_PAIR | _SURROGATE_LOW | (u & _SURROGATE_BITS)).to_bytes(
                    2, "little"
                )
                maxout -= 2
            else:
                out += u.to_bytes(2, "little")
                maxout -= 1
        else:
            out += data[pos].to_bytes(2, "little")
            pos += 1
            inlen -= 1
            maxout -= 1
    return bytes(out), False
