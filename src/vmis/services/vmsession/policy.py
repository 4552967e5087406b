"""What the guest lets the host run: the ``[vmsession]`` settings and the allow-list.

The host is a trust boundary, not a trusted party (qemu-ga's exec is all or
nothing; docs/services/vmsession.md §6). A guest administrator decides, in
the agent's configuration file, which programs a host may start and as whom::

    [vmsession]
    # programs the host may run: absolute glob patterns of executables, comma
    # or newline separated; "*" stays within one directory. Empty: nothing.
    allow = /usr/bin/uptime, /usr/bin/systemctl, /usr/local/lib/vmis/*
    # run as this user ("" = the agent's own user, root in a real guest)
    user =
    # default working directory (a guest path; "~" = the user's home)
    cwd = ~
    # where bare command names are looked up
    path = /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    # seconds between keepalives on a quiet session (docs/services/vmsession.md §4)
    keepalive = 15
    # seconds between SIGINT/SIGTERM and SIGKILL when a session is cancelled
    kill_grace = 5
    # sessions that may run at once
    max_sessions = 8

A program is checked by its **real path**: the name is looked up on
``path`` (or taken as given when absolute), symbolic links are resolved, and
the result must match a pattern whose directory part was resolved the same
way (so ``/bin/*`` also allows ``/usr/bin/ls`` on a merged-/usr system, and a
link ``/tmp/ls -> /usr/bin/rm`` is checked as ``/usr/bin/rm``). Standard
library only: this runs in guests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from vmis.errors import ConfigError, ServiceError

__all__ = ["SessionConfig", "allowed", "check_env", "resolve_program"]

_GLOB = re.compile(r"[*?\[]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SessionConfig:
    """The ``[vmsession]`` section of the agent's configuration file."""

    #: absolute glob patterns of the executables the host may run; empty: none
    allow: tuple[str, ...] = ()
    #: user commands run as; "" is the agent's own user
    user: str = ""
    #: default working directory, a guest path or "~" (the user's home)
    cwd: str = "~"
    #: the search path for bare command names, and the commands' PATH
    path: str = DEFAULT_PATH
    #: seconds between keepalives while a session is open
    keepalive: float = 15.0
    #: seconds from a cancel's first signal to SIGKILL of the process group
    kill_grace: float = 5.0
    #: sessions that may run at once
    max_sessions: int = 8

    @classmethod
    def from_section(cls, items: Mapping[str, str], source: str = "") -> SessionConfig:
        """Parse the section's ``key = value`` items.

        :param source: the file name, for messages.
        :raise ConfigError: Naming the setting and what is wrong with it.
        """
        where = f"{source}: [vmsession]" if source else "[vmsession]"
        values: dict[str, object] = {}
        for key, raw in items.items():
            text = raw.strip()
            if key == "allow":
                patterns = tuple(p.strip() for p in re.split(r"[,\n]", text) if p.strip())
                for pattern in patterns:
                    if not pattern.startswith("/"):
                        raise ConfigError(f"{where} allow: {pattern!r} is not an absolute path")
                values[key] = patterns
            elif key in ("user", "path"):
                values[key] = text
            elif key == "cwd":
                if text != "~" and not text.startswith("/"):
                    raise ConfigError(f"{where} cwd must be an absolute path or ~, not {text!r}")
                values[key] = text
            elif key in ("keepalive", "kill_grace"):
                try:
                    number = float(text)
                except ValueError:
                    raise ConfigError(f"{where} {key} = {text!r}: expected seconds") from None
                if not 0.05 <= number <= 3600:
                    raise ConfigError(f"{where} {key} must be between 0.05 and 3600 seconds")
                values[key] = number
            elif key == "max_sessions":
                try:
                    count = int(text)
                except ValueError:
                    raise ConfigError(f"{where} max_sessions = {text!r}: expected a number") \
                        from None
                if count < 1:
                    raise ConfigError(f"{where} max_sessions must be at least 1")
                values[key] = count
            else:
                raise ConfigError(f"{where}: unknown setting {key!r}")
        return cls(**values)  # type: ignore[arg-type]


def resolve_program(name: str, search_path: str) -> str:
    """Find the executable a command names and return its real path.

    :param name: ``argv[0]``: a bare name (looked up on *search_path*) or an
        absolute path.
    :raise ServiceError: ``bad-request`` for a relative path with a slash;
        ``not-found`` when nothing executable has that name.
    """
    if "/" in name and not name.startswith("/"):
        raise ServiceError("bad-request",
                           f"{name!r}: give a command name or an absolute path")
    import shutil  # not at the top: the guest tools load this module with the config

    found = shutil.which(name, path=search_path) if "/" not in name else (
        name if os.path.isfile(name) and os.access(name, os.X_OK) else None)
    if found is None:
        where = "" if "/" in name else f" on the guest's PATH ({search_path})"
        raise ServiceError("not-found", f"no executable {name!r}{where}")
    return os.path.realpath(found)


def _resolve_pattern(pattern: str) -> str:
    # Resolve the pattern's literal directory part the way the program's
    # path is resolved, so both sides are compared in the same terms.
    parts = PurePosixPath(pattern).parts
    literal = 0
    while literal < len(parts) and not _GLOB.search(parts[literal]):
        literal += 1
    if literal == len(parts):
        return os.path.realpath(pattern)
    head = os.path.realpath(os.path.join(*parts[:literal]))
    return str(PurePosixPath(head, *parts[literal:]))


def allowed(real_path: str, patterns: tuple[str, ...]) -> bool:
    """True if *real_path* matches one of the allow-list *patterns*.

    ``*`` and ``?`` stay within one path component; the whole path must match.
    """
    path = PurePosixPath(real_path)
    return any(path.match(_resolve_pattern(p)) for p in patterns)


def check_env(env: object) -> dict[str, str]:
    """Validate the environment variables a host asks for.

    Names must be shell identifiers. ``LD_*`` variables are refused: the
    dynamic loader would run code of the host's choosing ahead of any
    allowed program, which is what the allow-list is there to prevent.

    :raise ServiceError: ``bad-request`` or ``denied``, naming the variable.
    """
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise ServiceError("bad-request", "env must be an object of strings")
    result: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(value, str) or not _ENV_NAME.fullmatch(name) or "\0" in value:
            raise ServiceError("bad-request", f"invalid environment variable {name!r}")
        if name.startswith("LD_"):
            raise ServiceError("denied", f"the guest refuses to set {name} (dynamic loader "
                                         "variables would bypass the allow-list)")
        result[name] = value
    return result
