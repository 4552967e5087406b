"""Guest Service Interface (vmicguestinterface): file copy, docs/services/fcopy.md.

Hyper-V's Copy-VMFile (docs/hyperv.md §11), done the way its users asked
for: host to guest *and* guest to host, whole directory trees, large raw
frames with several in flight, SHA-256 verified end to end, a temporary
file renamed into place, and resumable after an interruption.

The modules of this package, all standard library only:

- :mod:`.paths`: guest path resolution inside the agent's root, symlinks
  resolved chroot-style, the ``[fcopy] allowed_roots`` policy;
- the blocking file work both ends share: :mod:`.receiver` (partial files,
  resume records, the hashing writer), :mod:`.reader` (the hashing reader),
  :mod:`.file_io` (what those two share), :mod:`.metadata` (a file's type,
  mode and times), :mod:`.bulk_memory` (glibc's buffers during copies);
- :mod:`.guest`: the guest service (handlers of the operations below);
- :mod:`.host`: the host half, Copy-VMFile on a VM's session; it runs
  :mod:`.engine` (files and trees, the result) on :mod:`.file_copier` (one
  file either way, the host's end of the stream); these three ship to no guest.
"""

from __future__ import annotations

import json
from enum import IntEnum

__all__ = [
    "BATCH_BYTES",
    "BATCH_FILES",
    "CHECKPOINT_BYTES",
    "CHUNK_SIZE",
    "DATA_TIMEOUT",
    "DEFAULT_ALLOWED_ROOTS",
    "HEAD_ROOM",
    "LEASE",
    "LIST_PAGE",
    "PARTIAL_MAX_AGE",
    "TREES",
    "WINDOW",
    "FcopyOp",
    "resume_token",
]


class FcopyOp(IntEnum):
    """Operations of the fcopy service (number 6), docs/services/fcopy.md §2."""

    #: json {path} -> {type, size, mode, mtime_ns}: what a guest path is
    STAT = 1
    #: json {path, parents} -> {path}: create a directory (-Recurse)
    MKDIR = 2
    #: json {path, name, size, token, ...} -> {handle, path, offset, prefix_sha256}
    OPEN_WRITE = 3
    #: json+raw {handle, offset} + data -> empty: data at the next offset
    WRITE = 4
    #: json {handle, sha256} -> {path, size, sha256}: verify, fsync, rename
    COMMIT = 5
    #: json {handle, keep} -> {}: give up a write (keep: resumable) or a read
    ABORT = 6
    #: json+raw {path, name, size, sha256, ...} + data -> {path, size, sha256}: small file
    PUT = 7
    #: json {path, mode, atime_ns, mtime_ns} -> {}: a directory's mode and times
    SETMETA = 8
    #: json {path, inline_max} -> json+raw {handle, size, ...} (+ the data if small)
    OPEN_READ = 9
    #: json {handle, offset, length} -> raw data
    READ = 10
    #: json {handle, offset} -> {prefix_sha256}: resume a read at offset
    SEEK = 11
    #: json {handle} -> {size, sha256}: end a read, the guest's hash of it
    CLOSE = 12
    #: json {path, start} -> {entries, next}: one directory, a page at a time
    LIST = 13
    # Version 1.1: trees as a stream, owners, the copies of a guest (§2.2)
    #: json {path, name, owner, ...} -> {tree, path}: start receiving a tree
    TREE_CREATE = 14
    #: json+raw {tree, seq, dirs, files, links} + data -> {sha256}: a batch of a tree
    TREE_PUT = 15
    #: json {tree, dirs} -> {path, files}: make the tree durable and place it
    TREE_COMMIT = 16
    #: json {path, owner, links} -> {tree, path, entries, next, skipped}: walk a tree
    TREE_OPEN = 17
    #: json {tree, start} -> {entries, next}: more of a walked tree
    TREE_LIST = 18
    #: json {tree, files} -> json+raw {files} + data: small files of a walked tree
    TREE_GET = 19
    #: json {} -> {open, partials}: the guest's open copies and partial files
    COPIES = 20
    #: json {path | all} -> {closed, removed}: give copies up, remove partial files
    DISCARD = 21


#: bytes of file data per frame: large frames amortise the per-frame costs
#: (the peer's max_payload still caps it, docs/protocol.md §2.4); measured
#: with bench/copy_throughput.py: 4 MiB frames cost a quarter less CPU per
#: byte than 1 MiB frames, 8 MiB no less than 4 (docs/services/fcopy.md §3.3)
CHUNK_SIZE = 4 * 1024 * 1024
#: data frames in flight per file, so the channel's latency does not bound
#: throughput (16 MiB in flight with 4 MiB frames)
WINDOW = 4
#: room kept in a frame for the json head of a json+raw payload
HEAD_ROOM = 4096
#: a receiver records a resume checkpoint every this many bytes
CHECKPOINT_BYTES = 8 * 1024 * 1024
#: directory entries per LIST answer
LIST_PAGE = 1000
#: seconds the host waits for one data request: a guest frozen for a backup
#: pauses copies into it until the thaw, at most [vss] freeze_timeout <= 900 s
#: (docs/services/fcopy.md §6); a guest that is gone ends the session sooner
DATA_TIMEOUT = 960.0
#: guest directories copies may touch when the configuration names none
DEFAULT_ALLOWED_ROOTS = "/tmp /var/tmp /home /root /srv /opt"
#: the service version that has the tree operations and owners (§2.2)
TREES = (1, 1)
#: a tree's files of at most this size travel whole, several to a request
SMALL_FILE = 1024 * 1024
#: data bytes, and files, in one batch of small files (TREE_PUT, TREE_GET)
BATCH_BYTES = 1024 * 1024
BATCH_FILES = 1024
#: batches in flight per tree copy
BATCH_WINDOW = 4
#: entries of a walked tree per TREE_OPEN or TREE_LIST answer
TREE_PAGE = 4096
#: seconds an open copy in the guest may go without a request before it is
#: closed (its partial file kept): the fallback when its host forgot it
LEASE = 600.0
#: seconds a resumable partial file may stay untouched before it is removed
PARTIAL_MAX_AGE = 24 * 3600.0
#: seconds between two sweeps for stale partial files
SWEEP_INTERVAL = 3600.0


def resume_token(direction: str, source: str, size: int, mtime_ns: int, destination: str) -> str:
    """The resume token of a copy, docs/services/fcopy.md §4.

    It names a copy, not a content: the same source file (path, size and
    modification time unchanged) copied to the same destination gets the
    same token, so a rerun finds the partial file of an interrupted run.
    Whether the partial data still matches the source is then checked by
    hashing, never assumed from the token.
    """
    # here, not at the top: the guest's command line reads this module's limits
    import hashlib

    identity = json.dumps(["vmis-fcopy-1", direction, source, size, mtime_ns, destination])
    return hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]
