"""OS names as administrators type them, reduced to lookup keys; wildcards; close names.

Case, punctuation and spacing do not matter, "Windows"/"Server"/editions may
be left out ("2016", "win 8.1", "Server 2012R2", "Windows 7 Pro x64"), and
service packs are read off the name ("Vista SP 2") to be checked against
those the OS had.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["closest_names", "is_pattern", "name_matches", "normalise_name", "words_of"]


#: words that do not tell OSes apart here: vendor, editions, "guest", "version" ...
_NOISE = frozenset((
    "windows", "microsoft", "ms", "server", "version", "edition", "guest", "guests", "host",
    "hosts", "os", "vm", "vms", "agent", "operating", "system", "machine", "virtual", "pro",
    "professional", "enterprise", "ultimate", "education", "datacenter", "standard",
    "essentials", "foundation", "premium", "basic", "starter", "home", "core", "nano",
    "channel", "ltsc", "ltsb", "rtm", "the", "for", "with", "and",
))

#: phrase rewrites on the space-separated lower-case words, in order
_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement) for pattern, replacement in (
        (r"\bservice pack\b", "sp"),
        (r"\b(?:r|release) 2\b", "r2"),
        (r"\bhome server\b|\bwhs\b", "homeserver"),
        (r"\bsmall business(?: server)?\b", "sbs"),
        (r"\bsemi ?annual\b", "sac"),
        (r"\bhyper ?v\b", " "),
        (r"\bwin\b", "windows"),
        (r"\b(?:ws|srv|svr)\b", "server"),
        (r"\bred hat\b", "redhat"),
        (r"\bx (?:64|86)\b|\b(?:amd|arm) 64\b|\b(?:32|64) bit\b", " "),
    ))


def words_of(text: str) -> list[str]:
    """The words of an OS name, lower case, with its common spellings rewritten."""
    text = unicodedata.normalize("NFKC", text).casefold()
    # "2012R2" -> "2012 r 2", "SP2" -> "sp 2", "win8.1" -> "win 8.1"
    text = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", text)
    # keep the dot of "8.1", drop every other punctuation mark
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = " ".join(re.sub(r"[^a-z0-9.]+", " ", text).split())
    for pattern, replacement in _PHRASES:
        text = pattern.sub(replacement, text)
    return text.split()


def normalise_name(text: str) -> tuple[str, frozenset[int]]:
    """Reduce an OS name to a lookup key and the service packs it names.

    ``"Windows Server 2012R2"``, ``"server 2012 r2"`` and ``"2012 R2 Datacenter"``
    all give ``("2012 r2", frozenset())``; ``"Windows XP (SP 2, SP 3)"`` gives
    ``("xp", frozenset({2, 3}))``.

    :param text: An OS name as typed or printed.
    :return: The key (words without noise) and the service-pack numbers.
    """
    words = words_of(text)
    kept: list[str] = []
    packs: set[int] = set()
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "sp":
            while i < len(words) and (words[i].isdigit() or words[i] == "sp"):
                if words[i].isdigit():
                    packs.add(int(words[i]))
                i += 1
        elif word not in _NOISE:
            kept.append(word)
    return " ".join(kept), frozenset(packs)


def _plain(text: str) -> str:
    # the words as typed, for comparing spellings: no rewrites, no noise dropped
    return " ".join(re.sub(r"[^a-z0-9.]+", " ", unicodedata.normalize("NFKC", text).casefold())
                    .split())


def is_pattern(text: str) -> bool:
    """Whether *text* is a wildcard pattern (``*`` or ``?``) rather than a name."""
    return any(c in text for c in "*?")


def closest_names(text: str, names: Iterable[str], first: Sequence[str] = (),
                  limit: int = 4) -> list[str]:
    """The *names* closest to *text*, best first, after *first*; at most *limit*."""
    # Score on both spellings: the raw words catch typos ("Windos 7"), the key
    # catches abbreviations ("ws2012r3" vs "Windows Server 2012 R2"); a name
    # sharing a distinctive word ("2011") ranks above a merely similar one.
    query = _plain(text)
    key = normalise_name(text)[0]
    scored: list[tuple[float, str]] = []
    for name in dict.fromkeys(names):
        name_key = normalise_name(name)[0]
        score = max(difflib.SequenceMatcher(None, query, _plain(name)).ratio(),
                    difflib.SequenceMatcher(None, key, name_key).ratio())
        if set(key.split()) & set(name_key.split()):
            score += 0.5
        scored.append((score, name))
    scored.sort(key=lambda s: -s[0])
    close = [name for score, name in scored if score >= 0.6]
    return list(dict.fromkeys([*first, *close]))[:limit]


def name_matches(pattern: str, *names: str) -> bool:
    """Whether any of *names* matches the wildcard *pattern*, case-insensitively."""
    pattern = unicodedata.normalize("NFKC", pattern).casefold()
    return any(fnmatch.fnmatchcase(unicodedata.normalize("NFKC", n).casefold(), pattern)
               for n in names)
