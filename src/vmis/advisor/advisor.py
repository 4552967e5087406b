"""The update advisor: which mechanism keeps a guest's integration services up to date.

Hyper-V answers this with three tables, one per host generation (the article
*Manage Hyper-V Integration Services*, section "Keep integration services up
to date"): Windows Update, the Integration Services disk, or the Linux
distribution's package manager, with notes (Data Exchange needed, a CAB file
where it cannot be enabled, unsupported and extended-support-only guests).
Those tables are data, checked in as ``vmis/data/update_paths.toml`` with
their provenance (which translation, which table and row, how the
translations differ); vmis's own answers for vmis hosts and vmis guests sit
beside them there. This module only reads that file and answers::

    >>> from vmis.advisor.advisor import update_path
    >>> advice = update_path("Windows Server 2012 R2", "Windows 7")
    >>> advice.mechanism, advice.source.table, advice.source.row
    ('Integration Services disk', 2, 4)

Names are matched the way administrators type them (:func:`normalise_name`):
case, punctuation and spacing do not matter, "Windows"/"Server"/editions may
be left out ("2016", "win 8.1", "Server 2012R2", "Windows 7 Pro x64"),
service packs are checked against those the OS had ("Vista SP 2"), and any
Linux distribution name is a Linux guest. An unknown name raises
:class:`UnknownOSError` naming the closest known names.

Host side, standard library only; no I/O but reading the data file once.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from vmis.errors import NotFoundError, VmisError

__all__ = [
    "Advice",
    "Advisor",
    "Source",
    "Support",
    "UnknownOSError",
    "UpdatePathDataError",
    "UpdatePaths",
    "default_advisor",
    "load_update_paths",
    "normalise_name",
    "update_path",
    "update_paths",
]

#: the data file, inside the ``vmis`` package
DATA_FILE = "update_paths.toml"


# Section: errors


class UnknownOSError(NotFoundError):
    """A host or guest OS name matches nothing the advisor knows.

    :ivar suggestions: the closest known names, best first.
    """

    def __init__(self, message: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.suggestions = tuple(suggestions)


class UpdatePathDataError(VmisError):
    """The update-path data file is malformed (a packaging or editing error)."""


# Section: answers


class Support(StrEnum):
    """How supported a guest is on a host, in the article's words."""

    SUPPORTED = "Supported"
    #: "Extended support only in Windows Server 2016"
    EXTENDED_SUPPORT_ONLY = "Extended support only"
    #: "Not under mainstream support"
    NO_MAINSTREAM_SUPPORT = "Not under mainstream support"
    #: "Will not be supported in Windows Server 2016", or no vmis agent
    NOT_SUPPORTED = "Not supported"
    #: the host's table has no row for this guest
    NOT_LISTED = "Not listed"


_SUPPORT_IDS = {
    "supported": Support.SUPPORTED,
    "extended-support-only": Support.EXTENDED_SUPPORT_ONLY,
    "no-mainstream-support": Support.NO_MAINSTREAM_SUPPORT,
    "not-supported": Support.NOT_SUPPORTED,
}


@dataclass(frozen=True, slots=True)
class Source:
    """Where an answer comes from: a table row of the article, or vmis itself."""

    #: "article" or "vmis"
    origin: str
    #: the citation, for people
    text: str
    #: table number (1-3) in the article, None for vmis answers
    table: int | None = None
    #: data row number in that table (separator rows not counted), None if not listed
    row: int | None = None


@dataclass(frozen=True, slots=True)
class Advice:
    """The answer for one host/guest pair."""

    #: the host as asked (canonical name), or the table's host group in listings
    host_os: str
    #: the host group whose table answers ("Windows 8.1/Windows Server 2012 R2")
    host_group: str
    #: the guest as the answering row prints it
    guest_os: str
    mechanism: str
    support: Support
    #: the row's Notes cell
    note: str
    #: the note, then every footnote and instruction it refers to, written out
    notes: tuple[str, ...]
    #: integration services the mechanism needs
    requires: tuple[str, ...]
    #: what to use where a requirement cannot be met
    fallback: str | None
    source: Source

    def to_json(self) -> dict[str, Any]:
        """The answer as ``--json`` prints it (PowerShell property names)."""
        return {
            "HostOS": self.host_os,
            "HostGroup": self.host_group,
            "GuestOS": self.guest_os,
            "Mechanism": self.mechanism,
            "Requires": list(self.requires),
            "Fallback": self.fallback,
            "Support": str(self.support),
            "Note": self.note,
            "Notes": list(self.notes),
            "Source": {"Origin": self.source.origin, "Table": self.source.table,
                       "Row": self.source.row, "Text": self.source.text},
        }


# Section: the data file, validated into frozen records


@dataclass(frozen=True, slots=True)
class GuestEntry:
    """A guest OS the tables name."""

    id: str
    name: str
    #: "windows", "linux" or "vmis"
    family: str
    #: service packs that exist for this OS (for checking names)
    service_packs: frozenset[int]
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostEntry:
    """A host OS a table heading names (table 0: the vmis host)."""

    id: str
    name: str
    table: int
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Row:
    """One data row of one of the article's tables."""

    table: int
    row: int
    guest: str
    printed: str
    service_packs: frozenset[int]
    mechanism: str
    support: Support
    note: str
    link: str
    requires: tuple[str, ...]
    fallback: str | None
    texts: tuple[str, ...]
    #: an undefined footnote marker the cell carries (kept, not shown)
    marker: str


@dataclass(frozen=True, slots=True)
class Table:
    """One of the article's three tables: a host group and its rows."""

    number: int
    heading: str
    texts: tuple[str, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class VmisAnswer:
    """vmis's own answer for a host kind and guest families."""

    id: str
    #: "vmis" or "hyper-v"
    host: str
    families: frozenset[str]
    printed: str
    mechanism: str
    support: Support
    note: str
    requires: tuple[str, ...]
    fallback: str | None
    texts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Distribution:
    """A Linux distribution family and the package of its Hyper-V daemons."""

    id: str
    name: str
    words: frozenset[str]
    package: str


@dataclass(frozen=True, slots=True)
class UpdatePaths:
    """The whole data file, cross-checked."""

    article: Mapping[str, str]
    requirements: Mapping[str, str]
    fallbacks: Mapping[str, str]
    mechanisms: Mapping[str, str]
    texts: Mapping[str, str]
    guests: Mapping[str, GuestEntry]
    hosts: Mapping[str, HostEntry]
    tables: tuple[Table, ...]
    vmis_source: str
    vmis_heading: str
    vmis_packages_any: str
    vmis_texts: Mapping[str, str]
    vmis_answers: tuple[VmisAnswer, ...]
    distributions: tuple[Distribution, ...]

    def table(self, number: int) -> Table:
        """The article's table *number* (1-3).

        :raise KeyError: When there is no such table.
        """
        for table in self.tables:
            if table.number == number:
                return table
        raise KeyError(number)


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if not isinstance(value, kind):
        raise UpdatePathDataError(f"{DATA_FILE}: {where}: '{key}' must be a {kind.__name__}")
    return value


def _strings(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _get(obj, key, list, where, [])
    if not all(isinstance(i, str) for i in items):
        raise UpdatePathDataError(f"{DATA_FILE}: {where}: '{key}' must list strings")
    return tuple(items)


def _ints(obj: Mapping[str, Any], key: str, where: str) -> frozenset[int]:
    items = _get(obj, key, list, where, [])
    if not all(isinstance(i, int) for i in items):
        raise UpdatePathDataError(f"{DATA_FILE}: {where}: '{key}' must list whole numbers")
    return frozenset(items)


def _str_map(obj: Mapping[str, Any], key: str) -> dict[str, str]:
    table = _get(obj, key, dict, "top level")
    if not all(isinstance(v, str) for v in table.values()):
        raise UpdatePathDataError(f"{DATA_FILE}: [{key}] must map names to strings")
    return dict(table)


def _check_ref(ids: Iterable[str], known: Mapping[str, object], kind: str, where: str) -> None:
    for ref in ids:
        if ref not in known:
            raise UpdatePathDataError(f"{DATA_FILE}: {where}: unknown {kind} '{ref}'")


def _support(value: str, where: str) -> Support:
    try:
        return _SUPPORT_IDS[value]
    except KeyError:
        raise UpdatePathDataError(f"{DATA_FILE}: {where}: unknown support '{value}'") from None


def load_update_paths(data: bytes | None = None) -> UpdatePaths:
    """Parse and cross-check the update-path data.

    :param data: TOML text; the packaged ``vmis/data/update_paths.toml`` if None.
    :raise UpdatePathDataError: When the data is malformed or refers to unknown ids.
    :return: The validated data.
    """
    if data is None:
        data = resources.files("vmis").joinpath("data", DATA_FILE).read_bytes()
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UpdatePathDataError(f"{DATA_FILE}: {exc}") from exc
    if doc.get("schema") != 1:
        raise UpdatePathDataError(f"{DATA_FILE}: schema must be 1")
    requirements = _str_map(doc, "requirements")
    fallbacks = _str_map(doc, "fallbacks")
    mechanisms = _str_map(doc, "mechanisms")
    texts = _str_map(doc, "texts")
    article = _str_map(doc, "article")

    guests: dict[str, GuestEntry] = {}
    for gid, g in _get(doc, "guests", dict, "top level").items():
        where = f"guests.{gid}"
        family = _get(g, "family", str, where)
        if family not in ("windows", "linux", "vmis"):
            raise UpdatePathDataError(f"{DATA_FILE}: {where}: unknown family '{family}'")
        guests[gid] = GuestEntry(gid, _get(g, "name", str, where), family,
                                 _ints(g, "service-packs", where), _strings(g, "aliases", where))

    def row_refs(r: Mapping[str, Any], where: str) -> tuple[str, tuple[str, ...], str | None,
                                                           tuple[str, ...]]:
        mechanism = _get(r, "mechanism", str, where)
        requires = _strings(r, "requires", where)
        fallback = r.get("fallback")
        if fallback is not None and not isinstance(fallback, str):
            raise UpdatePathDataError(f"{DATA_FILE}: {where}: 'fallback' must be a str")
        row_texts = _strings(r, "texts", where)
        _check_ref([mechanism], mechanisms, "mechanism", where)
        _check_ref(requires, requirements, "requirement", where)
        _check_ref([fallback] if fallback else [], fallbacks, "fallback", where)
        return mechanism, requires, fallback, row_texts

    tables: list[Table] = []
    for t in _get(doc, "tables", list, "top level"):
        number = _get(t, "number", int, "tables")
        rows: list[Row] = []
        for r in _get(t, "rows", list, f"table {number}"):
            where = f"table {number} row {r.get('row')}"
            mechanism, requires, fallback, row_texts = row_refs(r, where)
            _check_ref(row_texts, texts, "text", where)
            guest = _get(r, "guest", str, where)
            _check_ref([guest], guests, "guest", where)
            rows.append(Row(
                number, _get(r, "row", int, where), guest, _get(r, "printed", str, where),
                _ints(r, "sp", where), mechanism,
                _support(_get(r, "support", str, where, "supported"), where),
                _get(r, "note", str, where, ""), _get(r, "link", str, where, ""),
                requires, fallback, row_texts, _get(r, "marker", str, where, "")))
        if [r.row for r in rows] != list(range(1, len(rows) + 1)):
            raise UpdatePathDataError(f"{DATA_FILE}: table {number}: rows must be numbered 1..n")
        if len({r.guest for r in rows}) != len(rows):
            raise UpdatePathDataError(f"{DATA_FILE}: table {number}: a guest is listed twice")
        table_texts = _strings(t, "texts", f"table {number}")
        _check_ref(table_texts, texts, "text", f"table {number}")
        tables.append(Table(number, _get(t, "heading", str, f"table {number}"), table_texts,
                            tuple(rows)))
    if [t.number for t in tables] != [1, 2, 3]:
        raise UpdatePathDataError(f"{DATA_FILE}: the tables must be numbered 1, 2, 3")

    hosts: dict[str, HostEntry] = {}
    for hid, h in _get(doc, "hosts", dict, "top level").items():
        where = f"hosts.{hid}"
        table_no = _get(h, "table", int, where)
        if table_no not in (0, 1, 2, 3) or (table_no == 0) != (hid == "vmis"):
            raise UpdatePathDataError(f"{DATA_FILE}: {where}: bad table {table_no}")
        hosts[hid] = HostEntry(hid, _get(h, "name", str, where), table_no,
                               _strings(h, "aliases", where))
    if "vmis" not in hosts:
        raise UpdatePathDataError(f"{DATA_FILE}: [hosts.vmis] is missing")

    vmis = _get(doc, "vmis", dict, "top level")
    vmis_texts = _str_map(vmis, "texts")
    answers: list[VmisAnswer] = []
    for a in _get(vmis, "answers", list, "vmis"):
        where = f"vmis answer {a.get('id')}"
        mechanism, requires, fallback, answer_texts = row_refs(a, where)
        _check_ref(answer_texts, vmis_texts, "vmis text", where)
        host = _get(a, "host", str, where)
        if host not in ("vmis", "hyper-v"):
            raise UpdatePathDataError(f"{DATA_FILE}: {where}: unknown host kind '{host}'")
        answers.append(VmisAnswer(
            _get(a, "id", str, where), host, frozenset(_strings(a, "guests", where)),
            _get(a, "printed", str, where), mechanism,
            _support(_get(a, "support", str, where, "supported"), where),
            _get(a, "note", str, where, ""), requires, fallback, answer_texts))

    # every answer the advisor can be asked for must exist
    needed = [("vmis", "windows"), ("vmis", "linux"), ("vmis", "vmis"), ("hyper-v", "vmis")]
    for host, family in needed:
        if not any(a.host == host and family in a.families for a in answers):
            raise UpdatePathDataError(f"{DATA_FILE}: no vmis answer for {family} guests on "
                                      f"{host} hosts")
    if "linux" not in guests or guests["linux"].family != "linux":
        raise UpdatePathDataError(f"{DATA_FILE}: [guests.linux] is missing")

    distributions = tuple(
        Distribution(did, _get(d, "name", str, f"distributions.{did}"),
                     frozenset(_strings(d, "words", f"distributions.{did}")),
                     _get(d, "package", str, f"distributions.{did}"))
        for did, d in _get(doc, "distributions", dict, "top level").items())

    return UpdatePaths(
        article=article, requirements=requirements, fallbacks=fallbacks, mechanisms=mechanisms,
        texts=texts, guests=guests, hosts=hosts, tables=tuple(tables),
        vmis_source=_get(vmis, "source", str, "vmis"),
        vmis_heading=_get(vmis, "heading", str, "vmis"),
        vmis_packages_any=_get(vmis, "packages-any", str, "vmis"),
        vmis_texts=vmis_texts, vmis_answers=tuple(answers), distributions=distributions)


# Section: names


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


def _words(text: str) -> list[str]:
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
    words = _words(text)
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


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?")


def _suggest(text: str, names: Iterable[str], first: Sequence[str] = (),
             limit: int = 4) -> list[str]:
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


@dataclass(frozen=True, slots=True)
class _GuestMatch:
    entry: GuestEntry
    #: service packs the name gave
    service_packs: frozenset[int]
    #: the distribution a Linux name gave, with the text as typed
    distribution: Distribution | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class _HostUnit:
    """Who answers: one of the article's tables, or vmis (table None)."""

    #: the host as the answer prints it
    name: str
    table: Table | None


# Section: the advisor


class Advisor:
    """Answers update-path questions from one :class:`UpdatePaths`.

    :param paths: The data; the packaged file when None.
    :raise UpdatePathDataError: When two OSes normalise to the same name.
    """

    def __init__(self, paths: UpdatePaths | None = None) -> None:
        self.paths = paths if paths is not None else load_update_paths()
        self._guest_keys = self._index(
            (g.id, [g.name, *g.aliases, *(r.printed for t in self.paths.tables
                                           for r in t.rows if r.guest == g.id)])
            for g in self.paths.guests.values())
        self._host_keys = self._index(
            (h.id, [h.name, *h.aliases]) for h in self.paths.hosts.values())
        self._distro_words = {w: d for d in self.paths.distributions for w in d.words}

    @staticmethod
    def _index(entries: Iterable[tuple[str, list[str]]]) -> dict[str, str]:
        index: dict[str, str] = {}
        for entry_id, names in entries:
            for name in names:
                key = normalise_name(name)[0]
                if index.setdefault(key, entry_id) != entry_id:
                    # two OSes the user could not tell apart: a data error
                    raise UpdatePathDataError(
                        f"{DATA_FILE}: '{name}' ({entry_id}) and {index[key]} share the "
                        f"name '{key}'")
        return index

    # Section: resolving names

    def guest_names(self) -> list[str]:
        """Every guest name the advisor knows, in data order."""
        return [g.name for g in self.paths.guests.values()]

    def host_names(self) -> list[str]:
        """Every host name the advisor knows, in data order."""
        return [h.name for h in self.paths.hosts.values()]

    def _distribution(self, text: str) -> Distribution | None:
        for word in _words(text):
            if word in self._distro_words:
                return self._distro_words[word]
        return None

    def _resolve_guest(self, text: str) -> _GuestMatch:
        """Find the guest OS *text* names; any Linux distribution is a Linux guest.

        :raise UnknownOSError: When it names none, with the closest names.
        """
        key, packs = normalise_name(text)
        gid = self._guest_keys.get(key)
        if gid is None:
            distribution = self._distribution(text)
            if distribution is None:
                raise self._unknown("guest", text, self.guest_names())
            return _GuestMatch(self.paths.guests["linux"], frozenset(), distribution,
                               " ".join(text.split()))
        entry = self.paths.guests[gid]
        if not packs <= entry.service_packs:
            had = (f"{entry.name} had service pack {_join(sorted(entry.service_packs))}"
                   if entry.service_packs else f"{entry.name} had no service pack")
            close = _suggest(text, self.guest_names(), first=[entry.name])
            raise UnknownOSError(
                f"Unknown guest OS '{text}' ({had}); did you mean: {', '.join(close)}?", close)
        return _GuestMatch(entry, packs)

    def _resolve_host(self, text: str) -> HostEntry:
        """Find the host OS *text* names; any Linux distribution is a vmis host.

        :raise UnknownOSError: When it names none, with the closest names.
        """
        key, packs = normalise_name(text)
        hid = self._host_keys.get(key)
        if hid is not None and not packs:
            return self.paths.hosts[hid]
        if not packs and self._distribution(text) is not None:
            return self.paths.hosts["vmis"]
        raise self._unknown("host", text, self.host_names())

    def _unknown(self, kind: str, text: str, names: list[str]) -> UnknownOSError:
        close = _suggest(text, names)
        if close:
            return UnknownOSError(
                f"Unknown {kind} OS '{text}'; did you mean: {', '.join(close)}?", close)
        return UnknownOSError(
            f"Unknown {kind} OS '{text}'; known {kind} OS names: {', '.join(names)}.")

    # Section: answering

    def update_path(self, host_os: str, guest_os: str) -> Advice:
        """The update mechanism for one guest on one host.

        :param host_os: A host OS name ("Windows Server 2012 R2", "2016", "vmis").
        :param guest_os: A guest OS name ("Windows 7", "Ubuntu 22.04", "vmis").
        :raise UnknownOSError: When either name is unknown (naming the closest).
        :return: The answer, with its source.
        """
        host = self._resolve_host(host_os)
        guest = self._resolve_guest(guest_os)
        return self._answer(self._unit(host.table, host.name), guest)

    def update_paths(self, host_os: str = "*", guest_os: str = "*") -> list[Advice]:
        """Answers for every host and guest the names or wildcards match.

        A wildcard guest ("*", "Windows Server*") lists the rows of each host's
        table that match, in the article's order; an exact guest gets one
        answer per host, "Not listed" where that host's table has no row.

        :param host_os: A host OS name or wildcard pattern.
        :param guest_os: A guest OS name or wildcard pattern.
        :raise UnknownOSError: When a name is unknown or a pattern matches nothing.
        :return: The answers, hosts in table order (the vmis host last).
        """
        units = self._units(host_os)
        if not _is_pattern(guest_os):
            guest = self._resolve_guest(guest_os)
            return [self._answer(unit, guest) for unit in units]
        found: list[Advice] = []
        for unit in units:
            if unit.table is not None:
                found += [self._row_advice(unit, unit.table, row) for row in unit.table.rows
                          if _matches(guest_os, row.printed,
                                      self.paths.guests[row.guest].name)]
            else:
                found += [self._vmis_advice(unit, a, a.printed) for a in self.paths.vmis_answers
                          if a.host == "vmis" and _matches(guest_os, a.printed)]
        if not found:
            raise UnknownOSError(f"No guest OS matches '{guest_os}'; known guest OS names: "
                                 f"{', '.join(self.guest_names())}.")
        return found

    def _unit(self, table: int, name: str | None) -> _HostUnit:
        # name: the host as asked; None in listings, where the host group is shown
        if table == 0:
            return _HostUnit(name or self.paths.vmis_heading, None)
        found = self.paths.table(table)
        return _HostUnit(name or found.heading, found)

    def _units(self, host_os: str) -> list[_HostUnit]:
        if not _is_pattern(host_os):
            host = self._resolve_host(host_os)
            return [self._unit(host.table, host.name)]
        tables = sorted({h.table for h in self.paths.hosts.values()
                         if _matches(host_os, h.name, *h.aliases)},
                        key=lambda n: (n == 0, n))
        if not tables:
            raise UnknownOSError(f"No host OS matches '{host_os}'; known host OS names: "
                                 f"{', '.join(self.host_names())}.")
        return [self._unit(n, None) for n in tables]

    def _answer(self, unit: _HostUnit, guest: _GuestMatch) -> Advice:
        family = guest.entry.family
        if unit.table is None:
            answer = self._vmis_answer("vmis", family)
            if family == "windows":
                printed = guest.entry.name
            elif guest.distribution is not None:
                printed = f"{guest.text} (vmis guest agent)"
            else:
                printed = answer.printed
            return self._vmis_advice(unit, answer, printed)
        if family == "vmis":
            answer = self._vmis_answer("hyper-v", family)
            return self._vmis_advice(unit, answer, answer.printed)
        for row in unit.table.rows:
            if row.guest == guest.entry.id:
                return self._row_advice(unit, unit.table, row, guest)
        return self._not_listed(unit, unit.table, guest.entry)

    def _vmis_answer(self, host: str, family: str) -> VmisAnswer:
        # load_update_paths made sure there is one
        return next(a for a in self.paths.vmis_answers
                    if a.host == host and family in a.families)

    def _source(self, table: Table, row: int | None, guest: str) -> Source:
        art = self.paths.article
        where = f"{art['title']} ({art['revision']}), table {table.number} ({table.heading} hosts)"
        text = f"{where}, row {row}" if row is not None else f"{where}: no row for {guest}"
        return Source("article", text, table.number, row)

    def _row_advice(self, unit: _HostUnit, table: Table, row: Row,
                    guest: _GuestMatch | None = None) -> Advice:
        texts = self.paths.texts
        note = row.note
        notes = [f"{note} Read more: {row.link}" if row.link else note] if note else []
        notes += [texts[t] for t in row.texts] + [texts[t] for t in table.texts]
        printed = row.printed
        if guest is not None and guest.entry.family == "linux":
            packages = self.paths.vmis_packages_any
            if guest.distribution is not None:
                printed = f"{row.printed} ({guest.text})"
                if guest.distribution.package:
                    packages = f"{guest.distribution.name}: {guest.distribution.package}"
            notes.append("vmis: " + self.paths.vmis_texts["hyperv-daemons"].format(
                packages=packages))
        if guest is not None and guest.service_packs and row.service_packs and \
                max(guest.service_packs) < min(row.service_packs):
            notes.append(f"The article lists {row.printed}: install service pack "
                         f"{min(row.service_packs)} first.")
        return Advice(
            host_os=unit.name, host_group=table.heading, guest_os=printed,
            mechanism=self.paths.mechanisms[row.mechanism], support=row.support, note=note,
            notes=tuple(notes),
            requires=tuple(self.paths.requirements[r] for r in row.requires),
            fallback=self.paths.fallbacks[row.fallback] if row.fallback else None,
            source=self._source(table, row.row, row.printed))

    def _not_listed(self, unit: _HostUnit, table: Table, guest: GuestEntry) -> Advice:
        note = (f"The article's table for {table.heading} hosts has no row for {guest.name}: "
                "it names no update mechanism for this guest on these hosts.")
        listed = ", ".join(r.printed for r in table.rows)
        return Advice(
            host_os=unit.name, host_group=table.heading, guest_os=guest.name,
            mechanism=self.paths.mechanisms["none"], support=Support.NOT_LISTED, note=note,
            notes=(note, f"That table lists: {listed}.",
                   *(self.paths.texts[t] for t in table.texts)),
            requires=(), fallback=None, source=self._source(table, None, guest.name))

    def _vmis_advice(self, unit: _HostUnit, answer: VmisAnswer, printed: str) -> Advice:
        group = self.paths.vmis_heading if unit.table is None else unit.table.heading
        return Advice(
            host_os=unit.name, host_group=group, guest_os=printed,
            mechanism=self.paths.mechanisms[answer.mechanism], support=answer.support,
            note=answer.note,
            notes=(answer.note, *(self.paths.vmis_texts[t] for t in answer.texts)),
            requires=tuple(self.paths.requirements[r] for r in answer.requires),
            fallback=self.paths.fallbacks[answer.fallback] if answer.fallback else None,
            source=Source("vmis", f"{self.paths.vmis_source}: {answer.id}"))


def _matches(pattern: str, *names: str) -> bool:
    pattern = unicodedata.normalize("NFKC", pattern).casefold()
    return any(fnmatch.fnmatchcase(unicodedata.normalize("NFKC", n).casefold(), pattern)
               for n in names)


def _join(numbers: Sequence[int]) -> str:
    # 1 -> "1"; 1, 2, 3 -> "1, 2 or 3"
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# Section: module-level shortcuts


@functools.cache
def default_advisor() -> Advisor:
    """The advisor over the packaged data, built once per process."""
    return Advisor()


def update_path(host_os: str, guest_os: str) -> Advice:
    """:meth:`Advisor.update_path` over the packaged data."""
    return default_advisor().update_path(host_os, guest_os)


def update_paths(host_os: str = "*", guest_os: str = "*") -> list[Advice]:
    """:meth:`Advisor.update_paths` over the packaged data."""
    return default_advisor().update_paths(host_os, guest_os)
