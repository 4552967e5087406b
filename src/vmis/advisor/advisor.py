"""The advisor: which mechanism keeps a guest's integration services up to date.

It reads the data file once (:mod:`vmis.advisor.datafile`) and answers::

    >>> from vmis.advisor.advisor import update_path
    >>> advice = update_path("Windows Server 2012 R2", "Windows 7")
    >>> advice.mechanism, advice.source.table, advice.source.row
    ('Integration Services disk', 2, 4)

Names are matched the way administrators type them
(:func:`vmis.advisor.names.normalise_name`), and any Linux distribution name
is a Linux guest. An unknown name raises :class:`UnknownOSError` naming the
closest known names.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmis.advisor.answers import Advice, Source, Support
from vmis.advisor.datafile import (
    DATA_FILE,
    Distribution,
    GuestEntry,
    HostEntry,
    Row,
    Table,
    UpdatePaths,
    VmisAnswer,
    load_update_paths,
)
from vmis.advisor.names import (
    closest_names,
    is_pattern,
    name_matches,
    normalise_name,
    words_of,
)
from vmis.errors import UnknownOSError, UpdatePathDataError

__all__ = [
    "Advisor",
    "default_advisor",
    "update_path",
    "update_paths",
]


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
        for word in words_of(text):
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
            close = closest_names(text, self.guest_names(), first=[entry.name])
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
        close = closest_names(text, names)
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
        if not is_pattern(guest_os):
            guest = self._resolve_guest(guest_os)
            return [self._answer(unit, guest) for unit in units]
        found: list[Advice] = []
        for unit in units:
            if unit.table is not None:
                found += [self._row_advice(unit, unit.table, row) for row in unit.table.rows
                          if name_matches(guest_os, row.printed,
                                      self.paths.guests[row.guest].name)]
            else:
                found += [self._vmis_advice(unit, a, a.printed) for a in self.paths.vmis_answers
                          if a.host == "vmis" and name_matches(guest_os, a.printed)]
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
        if not is_pattern(host_os):
            host = self._resolve_host(host_os)
            return [self._unit(host.table, host.name)]
        tables = sorted({h.table for h in self.paths.hosts.values()
                         if name_matches(host_os, h.name, *h.aliases)},
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
