"""Where a guest tool finds the agent: the configuration file, and the control socket it names.

A tool such as ``vmis-guest Get-Service`` needs only the socket's path from
the configuration; reading it here, with configparser alone, spares the
tool what the whole configuration needs (vmis.guest.config: its
dataclasses, which import inspect, and the checks of every service's
settings): 20-30 ms of what was a 70-100 ms command (bench/cli_start.py).
The agent checks the whole file when it starts.
"""

from __future__ import annotations

import os

from vmis.errors import ConfigError

__all__ = ["CONFIG_PATH", "DEFAULT_CONTROL_SOCKET", "control_socket"]

#: the configuration file, relative to the agent's root
CONFIG_PATH = "/etc/vmis/agent.conf"
#: ``[agent] control_socket`` when the configuration does not say
DEFAULT_CONTROL_SOCKET = "/run/vmis/agent.sock"


def control_socket(config_path: str | os.PathLike[str]) -> str:
    """The control socket the configuration file names (a guest path); a missing file
    or setting means :data:`DEFAULT_CONTROL_SOCKET`.

    :raise ConfigError: When the file cannot be read or parsed, or names no path.
    """
    try:
        with open(config_path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return DEFAULT_CONTROL_SOCKET
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{os.fspath(config_path)}: {exc}") from exc
    import configparser  # only when there is a file: the lab's, a real guest's

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=os.fspath(config_path))
    except configparser.Error as exc:
        raise ConfigError(f"{os.fspath(config_path)}: {exc}") from exc
    path = parser.get("agent", "control_socket", fallback=DEFAULT_CONTROL_SOCKET)
    if not path.strip():
        raise ConfigError(f"{os.fspath(config_path)}: [agent] control_socket is empty")
    return path
