"""The update advisor: every row of the article's three tables, names, vmis answers, the CLI.

Two independent sources are checked against each other: the data file
(vmis/data/update_paths.toml) and ARTICLE below, typed separately by reading
the es-ES article (2020-05). A data-entry error shows as a mismatch between
them; where the seed translations are present (shared/seeds beside the
repository) the data is also checked against the es-ES text itself.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmis.cli.advisorcmd import format_advice
from vmis.cli.host import main
from vmis.errors import NotFoundError, UnknownOSError, UpdatePathDataError
from vmis.advisor.advisor import Advisor, default_advisor, update_path, update_paths
from vmis.advisor.answers import Support
from vmis.advisor.datafile import load_update_paths
from vmis.advisor.names import normalise_name

WU, DISK, PKG = "Windows Update", "Integration Services disk", "Package manager"
OK = Support.SUPPORTED

#: the host groups of the three tables (the tables' headings, es-ES)
HOSTS = {
    1: ["Windows 10", "Windows Server 2016", "Windows Server 2019"],
    2: ["Windows 8.1", "Windows Server 2012 R2"],
    3: ["Windows 8", "Windows Server 2012"],
}

#: (table, row, guest as printed, mechanism, support, needs Data Exchange), read
#: off the es-ES article; rows counted from 1 without the "-" separator rows
ARTICLE = [
    (1, 1, "Windows 10", WU, OK, False),
    (1, 2, "Windows 8.1", WU, OK, False),
    (1, 3, "Windows 8", WU, OK, True),
    (1, 4, "Windows 7", WU, OK, True),
    (1, 5, "Windows Vista (SP 2)", WU, OK, True),
    (1, 6, "Windows Server 2016", WU, OK, False),
    (1, 7, "Windows Server, Semi-Annual Channel", WU, OK, False),
    (1, 8, "Windows Server 2012 R2", WU, OK, False),
    (1, 9, "Windows Server 2012", WU, OK, True),
    (1, 10, "Windows Server 2008 R2 (SP 1)", WU, OK, True),
    (1, 11, "Windows Server 2008 (SP 2)", WU, Support.EXTENDED_SUPPORT_ONLY, False),
    (1, 12, "Windows Home Server 2011", WU, Support.NOT_SUPPORTED, False),
    (1, 13, "Windows Small Business Server 2011", WU, Support.NO_MAINSTREAM_SUPPORT, False),
    (1, 14, "Linux guests", PKG, OK, False),
    (2, 1, "Windows 10", WU, OK, False),
    (2, 2, "Windows 8.1", DISK, OK, False),
    (2, 3, "Windows 8", DISK, OK, False),
    (2, 4, "Windows 7", DISK, OK, False),
    (2, 5, "Windows Vista (SP 2)", DISK, OK, False),
    (2, 6, "Windows XP (SP 2, SP 3)", DISK, OK, False),
    (2, 7, "Windows Server 2016", WU, OK, False),
    (2, 8, "Windows Server, Semi-Annual Channel", WU, OK, False),
    (2, 9, "Windows Server 2012 R2", DISK, OK, False),
    (2, 10, "Windows Server 2012", DISK, OK, False),
    (2, 11, "Windows Server 2008 R2", DISK, OK, False),
    (2, 12, "Windows Server 2008 (SP 2)", DISK, OK, False),
    (2, 13, "Windows Home Server 2011", DISK, OK, False),
    (2, 14, "Windows Small Business Server 2011", DISK, OK, False),
    (2, 15, "Windows Server 2003 R2 (SP 2)", DISK, OK, False),
    (2, 16, "Windows Server 2003 (SP 2)", DISK, OK, False),
    (2, 17, "Linux guests", PKG, OK, False),
    (3, 1, "Windows 8.1", DISK, OK, False),
    (3, 2, "Windows 8", DISK, OK, False),
    (3, 3, "Windows 7", DISK, OK, False),
    (3, 4, "Windows Vista (SP 2)", DISK, OK, False),
    (3, 5, "Windows XP (SP 2, SP 3)", DISK, OK, False),
    (3, 6, "Windows Server 2012 R2", DISK, OK, False),
    (3, 7, "Windows Server 2012", DISK, OK, False),
    (3, 8, "Windows Server 2008 R2", DISK, OK, False),
    (3, 9, "Windows Server 2008 (SP 2)", DISK, OK, False),
    (3, 10, "Windows Home Server 2011", DISK, OK, False),
    (3, 11, "Windows Small Business Server 2011", DISK, OK, False),
    (3, 12, "Windows Server 2003 R2 (SP 2)", DISK, OK, False),
    (3, 13, "Windows Server 2003 (SP 2)", DISK, OK, False),
    (3, 14, "Linux guests", PKG, OK, False),
]

#: guests a table has no row for (the article lists them under other hosts)
NOT_LISTED = {
    1: ["Windows XP", "Windows Server 2003 R2", "Windows Server 2003"],
    2: [],
    3: ["Windows 10", "Windows Server 2016", "Windows Server, Semi-Annual Channel"],
}

SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"


def host_cases():
    return [pytest.param(host, row, id=f"t{row[0]}r{row[1]}-{host}")
            for row in ARTICLE for host in HOSTS[row[0]]]


# Section: the data against the independent table


def test_data_holds_exactly_the_articles_rows():
    paths = load_update_paths()
    data = [(t.number, r.row, r.printed, paths.mechanisms[r.mechanism], r.support,
             "data-exchange" in r.requires) for t in paths.tables for r in t.rows]
    assert data == ARTICLE
    assert [t.heading for t in paths.tables] == [
        "Windows 10/Windows Server 2016/2019", "Windows 8.1/Windows Server 2012 R2",
        "Windows 8/Windows Server 2012"]
    by_table = {n: sorted(h.name for h in paths.hosts.values() if h.table == n) for n in HOSTS}
    assert by_table == {n: sorted(names) for n, names in HOSTS.items()}


@pytest.mark.parametrize(("host", "expected"), host_cases())
def test_every_row_answers_for_every_host_of_its_table(host, expected):
    table, row, guest, mechanism, support, kvp = expected
    advice = update_path(host, guest)
    assert (advice.mechanism, advice.support) == (mechanism, support)
    assert (advice.source.origin, advice.source.table, advice.source.row) == ("article", table,
                                                                              row)
    assert advice.guest_os == guest
    assert advice.host_os == host
    assert advice.host_group == default_advisor().paths.table(table).heading
    if kvp:
        assert advice.requires == ("Data Exchange integration service (Key-Value Pair Exchange)",)
        assert advice.fallback is not None and "kb/3071740" in advice.fallback
        assert advice.note == "Requires the Data Exchange integration service.*"
        assert any(n.startswith("*If the Data Exchange integration service can't be enabled")
                   and "cabinet (CAB) file" in n for n in advice.notes)
    else:
        assert advice.requires == () and advice.fallback is None
        assert not any("cabinet (CAB)" in n for n in advice.notes)


def test_every_data_row_is_its_own_answer():
    # driven by the data alone: any row, asked by its printed name, answers itself
    advisor = default_advisor()
    for table in advisor.paths.tables:
        for host in (h for h in advisor.paths.hosts.values() if h.table == table.number):
            for row in table.rows:
                advice = advisor.update_path(host.name, row.printed)
                assert (advice.source.table, advice.source.row) == (table.number, row.row)
                assert advice.mechanism == advisor.paths.mechanisms[row.mechanism]


@pytest.mark.parametrize("table", [1, 2, 3])
def test_guests_without_a_row_are_not_listed(table):
    listed = {r[2] for r in ARTICLE if r[0] == table}
    for host in HOSTS[table]:
        for guest in NOT_LISTED[table]:
            advice = update_path(host, guest)
            assert advice.support is Support.NOT_LISTED
            assert advice.mechanism == "None"
            assert advice.source.table == table and advice.source.row is None
            assert f"no row for {guest}" in advice.source.text
    windows_guests = [g.name for g in default_advisor().paths.guests.values()
                      if g.family == "windows"]
    answered = {update_path(HOSTS[table][0], g).guest_os for g in windows_guests
                if update_path(HOSTS[table][0], g).support is not Support.NOT_LISTED}
    assert answered == listed - {"Linux guests"}


def test_notes_carry_the_articles_footnotes_and_instructions():
    disk = update_path("Windows Server 2012", "Windows XP SP3")
    assert disk.note == "See the instructions below."
    text = " ".join(disk.notes)
    assert "Insert Integration Services Setup Disk" in text
    assert "can't be automated" in text and "Configuration Manager" in text
    assert "offline VHDX images" in text
    assert "vmguest.iso" not in text
    wu = update_path("Windows 10", "Windows 10")
    assert any("vmguest.iso image file isn't included" in n for n in wu.notes)
    assert any("important updates from Windows Update" in n for n in wu.notes)
    old = update_path("Windows Server 2019", "Windows Server 2008 SP2")
    assert old.notes[0] == ("Extended support only in Windows Server 2016. Read more: "
                            "https://support.microsoft.com/lifecycle?p1=12925")
    linux = update_path("Windows 8.1", "Linux")
    assert linux.note == ("Integration services for Linux are built into the distribution, but "
                          "optional updates may be available.")
    assert any("when you update the kernel" in n for n in linux.notes)
    assert any("Supported Linux and FreeBSD virtual machines" in n for n in linux.notes)
    # the article's undefined footnote markers are kept in the data, not shown
    assert not any("**" in n for n in linux.notes)
    assert [r.marker for t in load_update_paths().tables for r in t.rows
            if r.guest == "linux"] == ["********", "**", "**"]


# Section: the data against the es-ES seed itself (when shared/ is beside the repo)


def _seed(locale):
    for path in sorted(SEEDS.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        if re.search(rf"^ms\.contentlocale: {locale}$", text, re.M):
            return text
    pytest.skip(f"no {locale} seed in {SEEDS}")


def _seed_tables(text):
    # the three tables of "keep-integration-services-up-to-date": (guest, mechanism, kvp)
    section = text.split('name="keep-integration-services-up-to-date"')[1]
    section = section.split('name="install-or-update-integration-services"')[0]
    tables = []
    for block in re.split(r"^\*\*.+\*\*\s*$", section, flags=re.M)[1:]:
        rows = []
        for line in block.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("|") or line.startswith("|:") or cells[0] == "-":
                continue
            rows.append(cells)
        tables.append(rows[1:])  # without the header row
    return tables


def _category(cell):
    cell = cell.casefold()
    if "windows update" in cell:
        return WU
    if "paquetes" in cell or "paket" in cell:
        return PKG
    if "disco" in cell or "datenträger" in cell:
        return DISK
    raise AssertionError(f"unknown mechanism cell {cell!r}")


def test_data_matches_the_es_es_seed():
    tables = _seed_tables(_seed("es-ES"))
    assert [len(t) for t in tables] == [14, 17, 14]
    seen = []
    for number, rows in enumerate(tables, 1):
        for i, (guest, mechanism, note) in enumerate(rows, 1):
            name = re.sub(r"SP (\d)", r"SP \1", " ".join(guest.split()))
            seen.append((number, i, name, _category(mechanism), note.endswith(".*")))
    paths = default_advisor().paths
    expected = [(t.number, r.row, r.printed, paths.mechanisms[r.mechanism],
                 "data-exchange" in r.requires) for t in paths.tables for r in t.rows]
    # the seed names two rows in Spanish
    translated = {"Invitados Linux": "Linux guests",
                  "Windows Server, Canal semianual": "Windows Server, Semi-Annual Channel"}
    assert [(t, r, translated.get(g, g), m, k) for t, r, g, m, k in seen] == expected


def test_the_older_de_de_revision_differs_in_four_rows_only():
    # the differences the data file's header records, and why es-ES stands
    new, old = _seed_tables(_seed("es-ES")), _seed_tables(_seed("de-DE"))
    differ = [(n + 1, " ".join(a[0].split()), _category(a[1]), _category(b[1]))
              for n, (ta, tb) in enumerate(zip(new, old, strict=True))
              for a, b in zip(ta, tb, strict=True) if _category(a[1]) != _category(b[1])]
    assert differ == [(2, "Windows 8.1", DISK, WU), (2, "Windows Server 2012 R2", DISK, WU),
                      (3, "Windows 8.1", DISK, WU), (3, "Windows Server 2012 R2", DISK, WU)]


# Section: names


@pytest.mark.parametrize(("text", "key", "packs"), [
    ("Windows Server 2012 R2", "2012 r2", set()),
    ("Server 2012R2", "2012 r2", set()),
    ("windows server 2012 r2 datacenter", "2012 r2", set()),
    ("WS2012R2", "2012 r2", set()),
    ("win 8.1", "8.1", set()),
    ("Windows 8.1.", "8.1", set()),
    ("Windows XP (SP 2, SP 3)", "xp", {2, 3}),
    ("Windows Vista Service Pack 2", "vista", {2}),
    ("Windows 7 Professional x64", "7", set()),
    ("Windows\u00a0Server, Semi-Annual Channel", "sac", set()),
    ("Windows Small Business Server 2011", "sbs 2011", set()),
    ("Windows Home Server 2011", "homeserver 2011", set()),
    ("Hyper-V Server 2016", "2016", set()),
])
def test_normalise_name(text, key, packs):
    assert normalise_name(text) == (key, frozenset(packs))


@pytest.mark.parametrize(("text", "name"), [
    ("windows 7", "Windows 7"),
    ("WINDOWS 7 SP1", "Windows 7"),
    ("win7", "Windows 7"),
    ("7", "Windows 7"),
    ("Vista SP 2", "Windows Vista (SP 2)"),
    ("Windows XP SP3", "Windows XP (SP 2, SP 3)"),
    ("2008 R2 SP1", "Windows Server 2008 R2"),
    ("Windows Server 2008 SP2", "Windows Server 2008 (SP 2)"),
    ("Server 2012R2", "Windows Server 2012 R2"),
    ("2016", "Windows Server 2016"),
    ("Windows Server version 1809", "Windows Server, Semi-Annual Channel"),
    ("SAC", "Windows Server, Semi-Annual Channel"),
    ("SBS 2011", "Windows Small Business Server 2011"),
    ("whs 2011", "Windows Home Server 2011"),
    ("linux", "Linux guests"),
    ("Linux guests", "Linux guests"),
    ("Ubuntu 22.04 LTS", "Linux guests (Ubuntu 22.04 LTS)"),
])
def test_guest_names_are_normalised(text, name):
    # on a Windows Server 2012 R2 host every one of these has a row
    assert update_path("Windows Server 2012 R2", text).guest_os == name


@pytest.mark.parametrize(("text", "table"), [
    ("Windows Server 2012 R2", 2), ("server 2012r2", 2), ("2012 R2", 2), ("WS2012R2", 2),
    ("win 8.1", 2), ("Windows 8.1 Pro", 2), ("Hyper-V Server 2012 R2", 2),
    ("2016", 1), ("2019", 1), ("Windows 10", 1), ("win10", 1),
    ("Windows Server 2019 Datacenter", 1),
    ("2012", 3), ("Windows 8", 3), ("windows server 2012", 3),
])
def test_host_names_are_normalised(text, table):
    assert update_path(text, "Windows 7").source.table == table


def test_service_packs_below_the_rows_are_pointed_out():
    advice = update_path("2016", "Windows Vista SP1")
    assert advice.notes[-1] == ("The article lists Windows Vista (SP 2): install service pack 2 "
                                "first.")
    assert not any("install service pack" in n for n in update_path("2016", "Vista SP2").notes)
    assert not any("install service pack" in n for n in update_path("2016", "Vista").notes)


def test_unknown_names_name_the_closest_known_names():
    with pytest.raises(UnknownOSError) as info:
        update_path("Windows Server 2012 R2", "Windows 7 SP9")
    assert str(info.value).startswith("Unknown guest OS 'Windows 7 SP9' (Windows 7 had service "
                                      "pack 1); did you mean: Windows 7, ")
    assert info.value.suggestions[0] == "Windows 7"
    assert isinstance(info.value, NotFoundError)
    cases = {"Windos 7": "Windows 7", "Windows Server 2012 R3": "Windows Server 2012 R2",
             "Small Busines Server": "Windows Small Business Server 2011",
             "Windows 10 SP1": "Windows 10"}
    for text, expected in cases.items():
        with pytest.raises(UnknownOSError) as info:
            update_path("2016", text)
        assert expected in info.value.suggestions, (text, info.value.suggestions)
    with pytest.raises(UnknownOSError) as info:
        update_path("2016", "2011")
    assert set(info.value.suggestions[:2]) == {"Windows Home Server 2011",
                                               "Windows Small Business Server 2011"}
    with pytest.raises(UnknownOSError) as info:
        update_path("Windows 11", "Windows 7")
    assert str(info.value).startswith("Unknown host OS 'Windows 11'; did you mean: Windows 10")
    with pytest.raises(UnknownOSError) as info:
        update_path("2016", "FreeBSD 13")
    assert info.value.suggestions == ()
    assert "known guest OS names: Windows 10, " in str(info.value)
    assert "Linux guests, vmis guest agent." in str(info.value)
    with pytest.raises(UnknownOSError, match="Unknown host OS 'Windows Server 2012 R2 SP1'"):
        update_path("Windows Server 2012 R2 SP1", "Windows 7")


# Section: vmis hosts and vmis guests


@pytest.mark.parametrize("guest", ["vmis", "vmis-guest", "Linux", "Debian 12", "Ubuntu 24.04",
                                   "Rocky Linux 9", "Arch Linux"])
@pytest.mark.parametrize("host", ["vmis", "QEMU/KVM", "Debian 12", "linux"])
def test_linux_and_vmis_guests_on_a_vmis_host_update_the_vmis_way(host, guest):
    advice = update_path(host, guest)
    assert advice.mechanism == "Update-VMIntegrationServices (online, from the host)"
    assert advice.host_os == "vmis" and advice.support is Support.SUPPORTED
    assert advice.requires == ("Guest Service Interface",)
    assert advice.fallback is not None and "Insert-SetupDisk" in advice.fallback
    text = " ".join(advice.notes)
    for step in ("vmis Update-VMIntegrationServices -VMName", "rolls back",
                 "vmis Insert-SetupDisk -VMName", "vmis setup-disk build",
                 "raw, qcow2 or vhdx", "root filesystem directory"):
        assert step in text
    assert advice.source.origin == "vmis" and advice.source.table is None
    assert advice.guest_os.endswith("(vmis guest agent)")


def test_windows_guests_on_a_vmis_host_have_no_vmis_agent():
    advice = update_path("vmis", "Windows Server 2016")
    assert advice.guest_os == "Windows Server 2016"
    assert (advice.mechanism, advice.support) == ("None", Support.NOT_SUPPORTED)
    assert "no agent for Windows guests" in " ".join(advice.notes)


@pytest.mark.parametrize("host", ["Windows Server 2019", "Windows Server 2012 R2", "Windows 8"])
def test_vmis_guests_on_hyper_v_update_from_the_setup_disk(host):
    advice = update_path(host, "vmis")
    assert advice.mechanism == "vmis setup disk (installer), or offline install"
    text = " ".join(advice.notes)
    assert "Set-VMDvdDrive -VMName V -Path <iso>" in text
    assert "does not apply on Hyper-V hosts" in text
    assert advice.source.text == "vmis (docs/updates.md): hyperv-host-vmis"


@pytest.mark.parametrize(("guest", "package"), [
    ("Debian 12", "Debian: hyperv-daemons"),
    ("Ubuntu 22.04", "Ubuntu: linux-cloud-tools-virtual"),
    ("RHEL 9", "Red Hat family: hyperv-daemons"),
    ("openSUSE Leap 15.5", "SUSE: hyper-v"),
    ("Linux", "hyperv-daemons on Debian and Red Hat-family distributions"),
    ("Alpine", "hyperv-daemons on Debian and Red Hat-family distributions"),
])
def test_linux_guests_on_hyper_v_get_the_articles_row_and_the_daemons_package(guest, package):
    advice = update_path("Windows Server 2016", guest)
    assert (advice.mechanism, advice.source.table, advice.source.row) == (PKG, 1, 14)
    daemons = advice.notes[-1]
    assert daemons.startswith("vmis: On Hyper-V, the kernel's hv_utils")
    assert f"({package}" in daemons
    assert "vmis-guest hyperv kvp|vss|fcopy" in daemons


# Section: listings


def test_listing_everything_gives_every_row_then_vmis():
    answers = update_paths("*", "*")
    assert [(a.source.table, a.source.row) for a in answers[:45]] == [(t, r) for t, r, *_ in
                                                                     ARTICLE]
    assert [a.source.text for a in answers[45:]] == [
        "vmis (docs/updates.md): vmis-host-linux", "vmis (docs/updates.md): vmis-host-windows"]
    assert answers[0].host_os == "Windows 10/Windows Server 2016/2019"


def test_listing_a_hosts_guests_keeps_the_article_order():
    answers = update_paths("Windows Server 2012 R2", "*")
    assert [a.guest_os for a in answers] == [r[2] for r in ARTICLE if r[0] == 2]
    assert {a.host_os for a in answers} == {"Windows Server 2012 R2"}
    servers = update_paths("2012", "Windows Server 2003*")
    assert [a.guest_os for a in servers] == ["Windows Server 2003 R2 (SP 2)",
                                             "Windows Server 2003 (SP 2)"]


def test_listing_a_guest_on_every_host():
    answers = update_paths("*", "Windows 10")
    assert [(a.host_group, a.mechanism, a.support) for a in answers] == [
        ("Windows 10/Windows Server 2016/2019", WU, OK),
        ("Windows 8.1/Windows Server 2012 R2", WU, OK),
        ("Windows 8/Windows Server 2012", "None", Support.NOT_LISTED),
        ("vmis host (QEMU/KVM, lab VMs)", "None", Support.NOT_SUPPORTED),
    ]
    assert [a.host_group for a in update_paths("Windows Server 201*", "7")] == [
        "Windows 10/Windows Server 2016/2019", "Windows 8.1/Windows Server 2012 R2",
        "Windows 8/Windows Server 2012"]
    with pytest.raises(UnknownOSError, match="No guest OS matches 'Solaris\\*'"):
        update_paths("*", "Solaris*")
    with pytest.raises(UnknownOSError, match="No host OS matches 'ESX\\*'"):
        update_paths("ESX*", "*")


# Section: the data file is checked when loaded


def _packaged() -> str:
    return (Path(__file__).resolve().parents[2] / "src/vmis/data/update_paths.toml").read_text()


@pytest.mark.parametrize(("old", "new", "message"), [
    ('row = 4, guest = "windows-7", printed = "Windows 7", mechanism = "disk"',
     'row = 4, guest = "windows-7", printed = "Windows 7", mechanism = "floppy"',
     "table 2 row 4: unknown mechanism 'floppy'"),
    ('{ row = 3, guest = "windows-8", printed = "Windows 8", mechanism = "windows-update"',
     '{ row = 33, guest = "windows-8", printed = "Windows 8", mechanism = "windows-update"',
     "rows must be numbered 1..n"),
    ('row = 2, guest = "windows-8-1", printed = "Windows 8.1", mechanism = "windows-update"',
     'row = 2, guest = "windows-10", printed = "Windows 8.1", mechanism = "windows-update"',
     "table 1: a guest is listed twice"),
    ('requires = ["data-exchange"], fallback = "cab", texts = ["data-exchange-cab", '
     '"windows-update"] },\n  { row = 4, guest = "windows-7"',
     'requires = ["kvp"], fallback = "cab", texts = ["data-exchange-cab", '
     '"windows-update"] },\n  { row = 4, guest = "windows-7"',
     "unknown requirement 'kvp'"),
    ('aliases = ["WHS 2011"]', 'aliases = ["Windows Vista"]', "share the name 'vista'"),
    ('support = "not-supported", note = "Will not', 'support = "maybe", note = "Will not',
     "unknown support 'maybe'"),
    ('guests = ["windows"]', 'guests = ["windows-xp"]',
     "no vmis answer for windows guests on vmis hosts"),
    ("schema = 1", "schema = 2", "schema must be 1"),
    ("[article]", "[article", "update_paths.toml"),
])
def test_malformed_data_is_refused(old, new, message):
    text = _packaged()
    assert text.count(old) == 1, old
    with pytest.raises(UpdatePathDataError, match=re.escape(message)):
        Advisor(load_update_paths(text.replace(old, new).encode()))


# Section: the command line


def test_cli_answers_in_format_list_shape(capsys):
    code = main(["Get-VMIntegrationServicesUpdatePath", "-HostOS", "Windows Server 2012 R2",
                 "-GuestOS", "Windows 7"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[:6] == [
        "HostOS    : Windows Server 2012 R2",
        "GuestOS   : Windows 7",
        "Mechanism : Integration Services disk",
        "Requires  :",
        "Fallback  :",
        "Support   : Supported",
    ]
    assert lines[6] == "Notes     : See the instructions below."
    notes = lines[7:-1]
    assert notes and all((line.startswith(" " * 12) and len(line) <= 100) or "https://" in line
                         for line in notes)
    assert lines[-1] == ("Source    : Manage Hyper-V Integration Services (es-ES, 2020-05), "
                         "table 2 (Windows 8.1/Windows Server 2012 R2 hosts), row 4")
    assert out == format_advice(update_path("Windows Server 2012 R2", "Windows 7")) + "\n"


def test_cli_json_alias_and_positional_names(capsys):
    assert main(["update-path", "2016", "Windows 8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["HostOS"] == "Windows Server 2016"
    assert data["Mechanism"] == "Windows Update"
    assert data["Requires"] == ["Data Exchange integration service (Key-Value Pair Exchange)"]
    assert data["Source"] == {"Origin": "article", "Table": 1, "Row": 3,
                              "Text": "Manage Hyper-V Integration Services (es-ES, 2020-05), "
                                      "table 1 (Windows 10/Windows Server 2016/2019 hosts), row 3"}
    assert main(["get-vmintegrationservicesupdatepath", "-hostos", "vmis", "-guest", "vmis",
                 "-json"]) == 0
    assert json.loads(capsys.readouterr().out)["Source"]["Origin"] == "vmis"


def test_cli_wildcards_print_a_table(capsys):
    assert main(["Get-VMIntegrationServicesUpdatePath", "-HostOS", "Windows 8",
                 "-GuestOS", "*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HostOS", "GuestOS", "Mechanism", "Support", "Notes"]
    assert set(lines[1].split()) == {"------", "-------", "---------", "-----"}
    assert len(lines) == 2 + 14
    assert lines[2].startswith("Windows 8 Windows 8.1 ")
    assert main(["update-path", "*", "*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 47
    assert [r["Source"]["Row"] for r in rows[:45]] == [r[1] for r in ARTICLE]


def test_cli_unknown_names_are_one_line_errors(capsys):
    code = main(["Get-VMIntegrationServicesUpdatePath", "-HostOS", "2016", "-GuestOS",
                 "Windows 7 SP9"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err == ("Get-VMIntegrationServicesUpdatePath: Unknown guest OS 'Windows 7 "
                            "SP9' (Windows 7 had service pack 1); did you mean: Windows 7, "
                            "Windows XP, Windows 8, Windows 10?\n")


def test_cli_as_a_process_needs_no_host_manager(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VMIS_SOCKET": str(tmp_path / "none.sock")}
    ok = subprocess.run([sys.executable, "-m", "vmis.cli.host", "update-path",
                         "Windows 8.1", "Windows 10"], capture_output=True, text=True,
                        env=env, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "Mechanism : Windows Update" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "vmis.cli.host", "update-path",
                          "Windows 95", "Windows 7"], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("update-path: Unknown host OS 'Windows 95'; ")
