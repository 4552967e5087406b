"""VM names: Hyper-V's rules and vmis's own, checked in one place (vmis.host.vmname)."""

from __future__ import annotations

import pytest

from vmis.errors import ConfigError
from vmis.host.manager import HostManager
from vmis.host.store import Store
from vmis.host.vmname import check_vm_name


@pytest.mark.parametrize("name", [
    "DemoVM", "web-01", "My VM", "db.prod", "x" * 100, "Zürich 名前", "#1 (test) 100% & more",
    "a=b", "it's", ".hidden", "{braces}", "~tilde", "semi;colon",
])
def test_names_hyperv_and_vmis_accept(name):
    assert check_vm_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty or only spaces"),
    ("   ", "empty or only spaces"),
    ("x" * 101, "101 characters long; at most 100"),
    (" lead", "begin or end with a space"),
    ("trail ", "begin or end with a space"),
    *((f"a{c}b", f"'{c}' is not allowed") for c in '/:*?"<>|'),
    ("a\\b", "'\\' is not allowed"),
    ("two\nlines", "'\\n' is not allowed"),
    ("tab\there", "'\\t' is not allowed"),
    ("del\x7f", "'\\x7f' is not allowed"),
    ("c1\x85", "'\\x85' is not allowed"),
    ("web[1]", "'[' is not allowed in a VM name (vmis reads [ ] as wildcards"),
    ("a,b", "',' is not allowed"),
    ("-x", "cannot begin with '-'"),
    ("..", "only dots"),
    (b"caf\xe9".decode("utf-8", "surrogateescape"), "not valid UTF-8"),
])
def test_names_refused_say_why(name, why):
    with pytest.raises(ConfigError, match=r"^invalid VM name ") as caught:
        check_vm_name(name)
    assert why in str(caught.value) and "\n" not in str(caught.value)


async def test_the_manager_refuses_before_registering_and_removes_by_id(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'host.db'}")
    # a VM registered before names were checked, straight into the store
    old = store.add_vm("old/name", "unix:/nonexistent.sock")
    manager = HostManager(store)
    await manager.start()
    try:
        with pytest.raises(ConfigError, match="'/' is not allowed"):
            manager.add_vm("new/name", "unix:/nonexistent.sock")
        assert [vm.name for vm in store.list_vms()] == ["old/name"]
        other = manager.add_vm("Other", "unix:/nonexistent.sock")
        # by id, and a name that is a VM's id
        assert (await manager.remove_vm(old.id, by_id=True)).name == "old/name"
        assert (await manager.remove_vm(other.id)).name == "Other"
        assert store.list_vms() == [] and manager.sessions == {}
    finally:
        await manager.close()
