"""The guest tools' light reading of the configuration: only where the control socket is."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmis.errors import ConfigError
from vmis.guest.config import AgentConfig, load_config
from vmis.guest.locations import DEFAULT_CONTROL_SOCKET, control_socket


def test_a_missing_file_or_setting_means_the_agents_default(tmp_path):
    conf = tmp_path / "agent.conf"
    assert control_socket(conf) == DEFAULT_CONTROL_SOCKET == AgentConfig().control_socket
    conf.write_text("[heartbeat]\nhealth_interval = 2\n")
    assert control_socket(conf) == DEFAULT_CONTROL_SOCKET
    conf.write_text("[agent]\nchannel = unix:/run/vmis/channel.sock\n")
    assert control_socket(str(conf)) == DEFAULT_CONTROL_SOCKET


def test_it_reads_the_same_setting_the_agent_does(tmp_path):
    conf = tmp_path / "agent.conf"
    conf.write_text("# a lab VM\n[agent]\nchannel = unix:/run/c.sock\n"
                    "CONTROL_SOCKET = /run/other/agent.sock\n[kvp]\npool_dir = /srv/kvp\n")
    assert control_socket(conf) == load_config(conf).control_socket == "/run/other/agent.sock"


def test_it_leaves_the_rest_of_the_file_to_the_agent(tmp_path):
    # A setting the agent refuses does not keep a tool from finding the agent: the
    # agent reports it when it starts (or, running, keeps its settings on reload).
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\ncontrol_socket = /run/x.sock\nlog_level = loud\n")
    with pytest.raises(ConfigError, match="log_level"):
        load_config(conf)
    assert control_socket(conf) == "/run/x.sock"


@pytest.mark.parametrize(("text", "match"), [
    ("control_socket = /run/x.sock\n", "no section headers"),
    ("[agent]\ncontrol_socket = /a\ncontrol_socket = /b\n", "already exists"),
    ("[agent]\ncontrol_socket =\n", "control_socket is empty"),
])
def test_a_file_it_cannot_use_is_a_config_error_naming_it(tmp_path, text, match):
    conf = tmp_path / "agent.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=match) as caught:
        control_socket(conf)
    assert str(conf) in str(caught.value)


def test_an_unreadable_file_is_a_config_error(tmp_path):
    (tmp_path / "agent.conf").mkdir()
    with pytest.raises(ConfigError, match=r"agent\.conf"):
        control_socket(tmp_path / "agent.conf")
    (tmp_path / "bad.conf").write_bytes(b"[agent]\ncontrol_socket = /run/\xff\n")
    with pytest.raises(ConfigError, match=r"bad\.conf"):
        control_socket(tmp_path / "bad.conf")


def test_reading_it_loads_neither_the_configuration_nor_the_protocols_session():
    code = ("import sys\n"
            "from vmis.guest.locations import control_socket\n"
            "from vmis.services.catalog import CATALOG\n"
            "print(control_socket(sys.argv[1]), len(CATALOG))\n"
            "print(' '.join(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code, "/nonexistent/agent.conf"],
                          capture_output=True, text=True, check=True, timeout=60)
    first, loaded = done.stdout.splitlines()
    assert first.split()[0] == DEFAULT_CONTROL_SOCKET
    modules = set(loaded.split())
    assert not modules & {"vmis.guest.config", "vmis.protocol.session", "vmis.protocol.frames",
                          "dataclasses", "pathlib"}
