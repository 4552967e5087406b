"""The guest agent's configuration file, ``/etc/vmis/agent.conf`` (INI).

Every setting, with its default::

    [agent]
    # where the host reaches the agent: serial:<port name or device>,
    # vsock:PORT, or unix:/path (lab agents)
    channel = serial:org.vmis.agent.0
    # local socket for the guest tools (vmis-guest Get-Service, kvp, ...)
    control_socket = /run/vmis/agent.sock
    # persistent state: start types, the host's last wishes, KVP, copies
    state_dir = /var/lib/vmis
    # debug, info, warning or error
    log_level = info
    # largest frame payload accepted, bytes (docs/protocol.md §2.4)
    max_payload = 16777216
    # real: act on this machine; fake: lab adapters (never in a real guest)
    adapters = real
    # seconds an updated agent waits for a host session before it rolls back
    update_confirm_timeout = 60

    [heartbeat]
    # seconds between two runs of the health checks in /etc/vmis/health.d
    health_interval = 5
    # seconds a health check may run before it counts as failed
    health_timeout = 10

    [vss]
    # seconds the filesystems may stay frozen before the agent thaws them by
    # itself, even if the host never sends THAW (docs/services/vss.md; at most 900)
    freeze_timeout = 60
    # seconds one hook of /etc/vmis/freeze.d may run before it is killed
    hook_timeout = 30

    [shutdown]
    # commands run for Stop-VM and Restart-VM (after the host has its answer)
    poweroff_command = systemctl poweroff
    reboot_command = systemctl reboot
    # without -Force, refuse while logind holds a block inhibitor on shutdown
    # (no: always proceed, as Linux's own Hyper-V driver does)
    check_inhibitors = yes

    [timesync]
    # offsets at least this large (seconds) are stepped at once, smaller ones slewed
    step_threshold = 0.128
    # chronyd's SOCK refclock socket (chrony.conf: refclock SOCK <path> refid VMIS);
    # while chronyd listens there it gets the samples and the clock is left to it
    chrony_socket = /run/chrony.vmis.sock
    # auto: leave the clock to a running NTP daemon (step only on SYNC);
    # ignore: always adjust the clock
    ntp_daemons = auto

    [kvp]
    # the KVP pool files .kvp_pool_0 ... .kvp_pool_4: the hyperv-daemons'
    # directory, so hv_kvp_daemon, cloud-init and vmis share them
    # (docs/services/kvp.md)
    pool_dir = /var/lib/hyperv

    [services]
    # start type of a service before any Set-Service: automatic, manual, disabled
    # (defaults: vmicguestinterface manual, vmicvmsession disabled, others automatic)
    vmicvmsession = disabled

    [fcopy]
    # guest directories Copy-VMFile may write to and read from (space-separated;
    # links are resolved first, so a link cannot lead outside them;
    # docs/services/fcopy.md §5); "/" allows everything
    allowed_roots = /tmp /var/tmp /home /root /srv /opt
    # seconds a partial file of an interrupted copy may stay untouched before
    # it is removed (a rerun of the copy resumes it until then; §4.1)
    partial_max_age = 86400

    [vmsession]
    # what the host may run with Invoke-Command (vmis.services.vmsession.policy)
    allow =

A lab agent runs with ``--root DIR``: the configuration file and every guest
path named here resolve inside DIR, so a lab VM never touches the machine it
runs on.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from vmis.errors import ConfigError, NotFoundError, ServiceError
from vmis.guest.locations import CONFIG_PATH, DEFAULT_CONTROL_SOCKET
from vmis.protocol import DEFAULT_MAX_PAYLOAD
from vmis.protocol.frames import MIN_MAX_PAYLOAD
from vmis.services.catalog import CATALOG, StartupType, by_guest_name
from vmis.services.fcopy import DEFAULT_ALLOWED_ROOTS, PARTIAL_MAX_AGE
from vmis.services.fcopy.paths import parse_roots
from vmis.services.vmsession.policy import SessionConfig

__all__ = ["CONFIG_PATH", "AgentConfig", "load_config"]

_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class AgentConfig:
    """Loaded once at start and passed down; never a global."""

    channel: str = "serial:org.vmis.agent.0"
    control_socket: str = DEFAULT_CONTROL_SOCKET
    state_dir: str = "/var/lib/vmis"
    log_level: str = "info"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    adapters: str = "real"
    #: seconds an updated agent waits for a host session before rolling back
    update_confirm_timeout: float = 60.0
    health_interval: float = 5.0
    health_timeout: float = 10.0
    freeze_timeout: float = 60.0
    hook_timeout: float = 30.0
    poweroff_command: str = "systemctl poweroff"
    reboot_command: str = "systemctl reboot"
    check_inhibitors: bool = True
    step_threshold: float = 0.128
    chrony_socket: str = "/run/chrony.vmis.sock"
    ntp_daemons: str = "auto"
    allowed_roots: str = DEFAULT_ALLOWED_ROOTS
    #: seconds a resumable partial file of a copy may stay untouched before it is removed
    partial_max_age: float = PARTIAL_MAX_AGE
    pool_dir: str = "/var/lib/hyperv"
    #: guest service name -> start type before any Set-Service
    startup: dict[str, StartupType] = field(
        default_factory=lambda: {s.guest_name: s.default_startup for s in CATALOG}
    )
    #: the [vmsession] section: VM Session policy (docs/services/vmsession.md §6)
    vmsession: SessionConfig = field(default_factory=SessionConfig)


_SECTIONS = {
    "agent": ("channel", "control_socket", "state_dir", "log_level", "max_payload", "adapters",
              "update_confirm_timeout"),
    "heartbeat": ("health_interval", "health_timeout"),
    "vss": ("freeze_timeout", "hook_timeout"),
    "shutdown": ("poweroff_command", "reboot_command", "check_inhibitors"),
    "timesync": ("step_threshold", "chrony_socket", "ntp_daemons"),
    "fcopy": ("allowed_roots", "partial_max_age"),
    "kvp": ("pool_dir",),
}

_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


def _bool(text: str) -> bool:
    """yes/no, true/false, on/off, 1/0."""
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


#: field type name -> converter of its text
_CONVERTERS: dict[str, Callable[[str], object]] = {"int": int, "float": float, "bool": _bool}


def _convert(name: str, text: str, kind: Callable[[str], object]) -> object:
    try:
        value = kind(text)
    except ValueError:
        expected = "yes or no" if kind is _bool else f"a {getattr(kind, '__name__', 'value')}"
        raise ConfigError(f"{name} = {text!r}: expected {expected}") from None
    if isinstance(value, float) and not value > 0:
        raise ConfigError(f"{name} must be positive, not {text}")
    return value


def load_config(path: Path) -> AgentConfig:
    """Read the configuration file; a missing file means all defaults.

    :raise ConfigError: Naming the file, the setting and what is wrong.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(), source=str(path))
    except FileNotFoundError:
        return AgentConfig()
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    types = {f.name: f.type for f in fields(AgentConfig)}
    values: dict[str, object] = {}
    for section in parser.sections():
        known = _SECTIONS.get(section)
        if section == "services":
            continue
        if section == "vmsession":
            values[section] = SessionConfig.from_section(dict(parser.items(section)), str(path))
            continue
        if known is None:
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key, text in parser.items(section):
            if key not in known:
                raise ConfigError(f"{path}: unknown setting {key!r} in [{section}]")
            kind = _CONVERTERS.get(str(types[key]), str)
            values[key] = _convert(key, text, kind)
    startup = AgentConfig().startup
    if parser.has_section("services"):
        for name, text in parser.items("services"):
            try:
                startup[by_guest_name(name).guest_name] = StartupType.parse(text)
            except NotFoundError as exc:
                raise ConfigError(f"{path}: [services] {exc}") from None
    config = AgentConfig(**values, startup=startup)  # type: ignore[arg-type]
    if config.log_level not in _LOG_LEVELS:
        raise ConfigError(f"{path}: log_level must be one of {', '.join(_LOG_LEVELS)}")
    if config.adapters not in ("real", "fake"):
        raise ConfigError(f"{path}: adapters must be real or fake")
    if config.freeze_timeout > 900:
        raise ConfigError(f"{path}: [vss] freeze_timeout is at most 900 seconds (Hyper-V's limit)")
    if config.ntp_daemons not in ("auto", "ignore"):
        raise ConfigError(f"{path}: [timesync] ntp_daemons must be auto or ignore")
    if not (config.poweroff_command.strip() and config.reboot_command.strip()):
        raise ConfigError(f"{path}: [shutdown] power commands must not be empty")
    try:
        parse_roots(config.allowed_roots)
    except ServiceError as exc:
        raise ConfigError(f"{path}: [fcopy] allowed_roots: {exc}") from None
    if not config.pool_dir.startswith("/"):
        raise ConfigError(f"{path}: [kvp] pool_dir must be an absolute path")
    if config.max_payload < MIN_MAX_PAYLOAD:
        raise ConfigError(f"{path}: max_payload must be at least {MIN_MAX_PAYLOAD}")
    return config
