"""Ask this machine's apt about the guest's Debian inputs: mirror and kernel package.

The image is built from the Debian mirror this machine is configured with
(``/etc/apt/sources.list`` and ``sources.list.d``), so a machine behind a
local mirror or a snapshot builds from the same place its own packages come
from. ``VMIS_DEBIAN_MIRROR`` overrides it.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmis.errors import ImageBuildError

__all__ = [
    "DEFAULT_MIRROR",
    "KernelPackage",
    "debian_mirror",
    "parse_sources",
    "resolve_kernel",
]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
_KERNEL_META = "linux-image-amd64"


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One ``deb`` source: a URI with its suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_sources(text: str, *, deb822: bool) -> list[SourceEntry]:
    """Parse an apt sources file, one-line style (``.list``) or deb822 (``.sources``).

    Only ``deb`` (binary) entries are returned; disabled deb822 stanzas
    (``Enabled: no``) are skipped.
    """
    entries: list[SourceEntry] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = ""
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0].isspace() and key:  # continuation line
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append(
                    SourceEntry(
                        uri, tuple(fields.get("suites", "").split()),
                        tuple(fields.get("components", "").split()),
                    )
                )  # fmt: skip
        return entries
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            entries.append(SourceEntry(words[0], (words[1],), tuple(words[2:])))
    return entries


def debian_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror URI this machine uses for ``suite`` (main archive, not security).

    :param suite: e.g. ``"bookworm"``.
    :param apt_dir: apt's configuration directory.
    :return: ``$VMIS_DEBIAN_MIRROR`` if set, else the first matching source, else
        :data:`DEFAULT_MIRROR`.
    """
    override = os.environ.get("VMIS_DEBIAN_MIRROR")
    if override:
        return override
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except OSError:
            continue
        for entry in parse_sources(text, deb822=path.suffix == ".sources"):
            if suite in entry.suites and "main" in entry.components:
                return entry.uri.rstrip("/")
    return DEFAULT_MIRROR


@dataclass(frozen=True, slots=True)
class KernelPackage:
    """The Debian kernel the guest boots: the versioned package behind ``linux-image-amd64``."""

    #: e.g. ``linux-image-6.1.0-56-amd64``
    name: str
    #: e.g. ``6.1.192-2``
    version: str

    @property
    def release(self) -> str:
        """The kernel release (``uname -r``), e.g. ``6.1.0-56-amd64``."""
        return self.name.removeprefix("linux-image-")


def parse_kernel_meta(show: str) -> KernelPackage:
    """Parse ``apt-cache show --no-all-versions linux-image-amd64`` output.

    :raise ValueError: When no ``Depends: linux-image-<release> (= <version>)`` is found.
    """
    match = re.search(r"^Depends:.*?\b(linux-image-[^\s,(]+)\s*\(=\s*([^)\s]+)\)", show, re.M)
    if match is None:
        raise ValueError("no versioned linux-image dependency in apt-cache output")
    return KernelPackage(match.group(1), match.group(2))


def resolve_kernel() -> KernelPackage:
    """Ask apt which kernel ``linux-image-amd64`` currently stands for.

    :raise ImageBuildError: When apt is missing or does not know the package.
    """
    try:
        proc = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", _KERNEL_META],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except FileNotFoundError as err:
        raise ImageBuildError(
            "resolve kernel", "apt-cache not found: the image is built on Debian 12"
        ) from err
    except subprocess.TimeoutExpired as err:
        raise ImageBuildError("resolve kernel", "apt-cache did not answer in 60 s") from err
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ImageBuildError(
            "resolve kernel",
            f"apt does not know {_KERNEL_META} ({proc.stderr.strip() or 'no candidate'}); "
            "run apt-get update",
        )
    try:
        return parse_kernel_meta(proc.stdout)
    except ValueError as err:
        raise ImageBuildError("resolve kernel", str(err)) from err
