"""The protocol package's names: each one its module's, loaded when first used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import vmis.protocol


def test_every_exported_name_is_its_own_modules_object():
    for name in vmis.protocol.__all__:
        homes = [m for m in vmis.protocol._MODULES
                 if name in importlib.import_module(f"vmis.protocol.{m}").__all__]
        assert len(homes) == 1, (name, homes)
        home = importlib.import_module(f"vmis.protocol.{homes[0]}")
        assert getattr(vmis.protocol, name) is getattr(home, name), name


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        vmis.protocol.Nothing  # noqa: B018
    with pytest.raises(ImportError):
        from vmis.protocol import Nothing  # type: ignore[attr-defined]  # noqa: F401


def test_the_service_numbers_load_without_the_framing_and_the_session():
    code = ("import sys\n"
            "from vmis.protocol.services import ServiceId\n"
            "before = sorted(m for m in sys.modules if m.startswith('vmis.protocol'))\n"
            "from vmis.protocol import Connection, encode_frame\n"
            "after = sorted(m for m in sys.modules if m.startswith('vmis.protocol'))\n"
            "print(' '.join(before)); print(' '.join(after)); print(Connection.__module__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    before, after, home = done.stdout.splitlines()
    assert before.split() == ["vmis.protocol", "vmis.protocol.services"]
    assert {"vmis.protocol.session", "vmis.protocol.frames"} <= set(after.split())
    assert home == "vmis.protocol.session"
