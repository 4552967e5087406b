"""The update-path data file, ``vmis/data/update_paths.toml``, validated into frozen records.

The file holds the article's three tables with their provenance and vmis's
own answers (docs/updates.md). :func:`load_update_paths` checks every
reference when loading (mechanisms, requirements, fallbacks, footnotes,
guests, rows numbered 1..n), so a packaging or editing error shows as
:class:`UpdatePathDataError` naming the place, never as a wrong answer.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from vmis.advisor.answers import Support
from vmis.errors import UpdatePathDataError

__all__ = [
    "DATA_FILE",
    "Distribution",
    "GuestEntry",
    "HostEntry",
    "Row",
    "Table",
    "UpdatePaths",
    "VmisAnswer",
    "load_update_paths",
]

#: the data file, inside the ``vmis`` package
DATA_FILE = "update_paths.toml"


_SUPPORT_IDS = {
    "supported": Support.SUPPORTED,
    "extended-support-only": Support.EXTENDED_SUPPORT_ONLY,
    "no-mainstream-support": Support.NO_MAINSTREAM_SUPPORT,
    "not-supported": Support.NOT_SUPPORTED,
}


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
