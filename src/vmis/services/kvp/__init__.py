"""Key-Value Pair Exchange (vmickvpexchange, Hyper-V "Data Exchange"), docs/services/kvp.md.

The five Hyper-V pools are numbered as the kernel numbers them
(:class:`~vmis.services.kvp.pool.Pool`) and named as the Windows guest
registry names them (:data:`POOL_NAMES`). The host writes External (and the
host facts in AutoExternal); the guest writes Guest; Auto is computed from
the guest OS (:mod:`.intrinsic`).

:mod:`vmis.services.kvp.pool` is the one implementation of the Linux
hyperv-daemons pool-file format (``/var/lib/hyperv/.kvp_pool_N``); the Hyper-V
KVP daemon (:mod:`vmis.hyperv.kvp`) and the vmis KVP service (:mod:`.guest`)
both store their guest pools through it, so either can read what the other
wrote.

Standard library only.
"""

from __future__ import annotations

from enum import IntEnum

from vmis.errors import KvpFormatError, NotFoundError
from vmis.services.kvp.pool import KEY_SIZE, VALUE_SIZE, Pool, encode_record

__all__ = [
    "DEFAULT_POOL_DIR",
    "HOST_POOLS",
    "KEY_SIZE",
    "NOTIFY_CHUNK",
    "POOL_NAMES",
    "VALUE_SIZE",
    "KvpOp",
    "check_item",
    "parse_pool",
    "pool_name",
    "wire_text",
]

#: where the pools live in the guest unless ``[kvp] pool_dir`` says otherwise
#: (the hyperv-daemons' directory, so their tools and ours share the files)
DEFAULT_POOL_DIR = "/var/lib/hyperv"

#: docs/services/kvp.md §2: a POOL notification carries at most this many bytes
#: of items, below the smallest payload limit a peer may announce (64 KiB)
NOTIFY_CHUNK = 48 * 1024


class KvpOp(IntEnum):
    """KVP operations, docs/services/kvp.md §2."""

    #: host -> guest request: {"pool", "items": [[key, value], ...]} -> {"changed"}
    SET = 1
    #: host -> guest request: {"pool", "key"} -> {"deleted": true} or not-found
    DELETE = 2
    #: guest -> host notification: one pool's whole content, in parts
    POOL = 3


#: pool names, as the Windows guest registry and Get-VMKvp spell them
POOL_NAMES: dict[Pool, str] = {
    Pool.EXTERNAL: "External",
    Pool.GUEST: "Guest",
    Pool.AUTO: "Auto",
    Pool.AUTO_EXTERNAL: "AutoExternal",
    Pool.AUTO_INTERNAL: "AutoInternal",
}

#: the pools the host writes: External (administrator data) and AutoExternal
#: (host facts), as a Hyper-V host SETs and DELETEs only pools 0 and 3
HOST_POOLS = (Pool.EXTERNAL, Pool.AUTO_EXTERNAL)


def pool_name(pool: int) -> str:
    """``External``, ``Guest``, ... for a pool number."""
    return POOL_NAMES[Pool(pool)]


def parse_pool(text: str | int) -> Pool:
    """A pool by name (case-insensitive) or number.

    :raise NotFoundError: Naming the valid pools.
    """
    # ASCII digits only: str.isdigit() also takes "²" and "৩", and strip() takes
    # separators ("\x1d") that int() refuses; either was a ValueError, not this one line
    if isinstance(text, int) or (text.strip().isascii() and text.strip().isdigit()):
        number = text if isinstance(text, int) else int(text.strip())
        if number in Pool._value2member_map_:
            return Pool(number)
    else:
        for pool, name in POOL_NAMES.items():
            if name.lower() == text.strip().lower():
                return pool
    raise NotFoundError(f"no KVP pool {text!r}; pools: {', '.join(POOL_NAMES.values())}")


def check_item(key: str, value: str) -> None:
    """Check that a key and value fit a pool record (docs/services/kvp.md §1).

    :raise KvpSizeError: When the key is over 512 or the value over 2048
        bytes, UTF-8 encoded with their terminating NUL.
    :raise KvpFormatError: For an empty key, or a NUL or unencodable character.
    """
    if not key:
        raise KvpFormatError("a KVP key cannot be empty")
    encode_record(key, value)


def wire_text(text: str) -> str:
    """Text that JSON can carry: bytes that were not UTF-8 in a pool file
    (kept by surrogateescape) become U+FFFD, for display on the host."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")
