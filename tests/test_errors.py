"""The error tree (src/vmis/errors.py, docs/architecture.md §7).

One tree, defined and drawn in one module; its root is never raised as such;
every class answers over the API with a status and comes back on the other
side as the same class, message and attributes.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import vmis
from vmis import errors
from vmis.api import errors as api_errors
from vmis.protocol import RequestReceived

PKG = Path(vmis.__file__).resolve().parent

#: modules that are scripts another program runs, not importable on their own
#: (besides every __main__): Alembic runs env.py inside a migration's context
SCRIPTS = {"vmis.host.migrations.env"}

_DRAWN = re.compile(r"^(?P<lead>[ |]*)\+-- (?P<name>\w+)\s+(?P<when>\S.*)$")


def _import_every_module() -> None:
    for module in pkgutil.walk_packages([str(PKG)], "vmis."):
        if module.name.rsplit(".", 1)[-1] != "__main__" and module.name not in SCRIPTS:
            importlib.import_module(module.name)


def _vmis_error_classes() -> set[type[errors.VmisError]]:
    """Every subclass of the root defined in vmis (tests define toys of their own)."""
    _import_every_module()
    found: set[type[errors.VmisError]] = set()
    todo = [errors.VmisError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {cls for cls in found if cls.__module__.split(".")[0] == "vmis"}


def _parent(cls: type) -> str:
    (parent,) = [b for b in cls.__bases__ if issubclass(b, errors.VmisError)]
    return parent.__name__


def _drawing() -> dict[str, str]:
    """class name -> parent name, read from the tree drawn in errors.py's docstring."""
    doc = errors.__doc__ or ""
    lines = doc.split("::", 1)[1].splitlines()
    root_line = next(line for line in lines if line.strip())
    assert root_line.strip() == "VmisError"
    stack = [(len(root_line) - len(root_line.lstrip()), "VmisError")]
    drawn: dict[str, str] = {}
    for line in lines[lines.index(root_line) + 1:]:
        if not line.strip():
            break
        match = _DRAWN.match(line)
        assert match, f"not a line of the drawing (a class and when it is raised): {line!r}"
        column = match.start("name")
        while stack[-1][0] >= column:
            stack.pop()
        drawn[match["name"]] = stack[-1][1]
        stack.append((column, match["name"]))
    return drawn


def test_every_error_class_is_drawn_under_its_parent():
    drawn = _drawing()
    classes = {cls.__name__: cls for cls in _vmis_error_classes() if cls is not errors.VmisError}
    missing = sorted(set(classes) - set(drawn))
    assert not missing, f"not drawn in src/vmis/errors.py: {missing}"
    misplaced = {name: (drawn[name], _parent(cls)) for name, cls in classes.items()
                 if drawn[name] != _parent(cls)}
    assert not misplaced, f"drawn under the wrong parent (drawn, real): {misplaced}"
    stale = sorted(set(drawn) - set(classes))
    assert not stale, f"drawn but not a class: {stale}"


def test_every_error_class_is_defined_in_errors_py():
    elsewhere = sorted(f"{cls.__module__}.{cls.__name__}" for cls in _vmis_error_classes()
                       if cls.__module__ != "vmis.errors")
    assert not elsewhere, f"define these in src/vmis/errors.py: {elsewhere}"
    exported = {cls.__name__ for cls in _vmis_error_classes()} - set(errors.__all__)
    assert not exported, f"missing from vmis.errors.__all__: {sorted(exported)}"


def _is_root(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "VmisError") or \
        (isinstance(node, ast.Attribute) and node.attr == "VmisError")


def test_the_root_is_never_raised_or_built_directly():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            # a call builds one (to raise or to send); a bare raise of the class, too
            root = (isinstance(node, ast.Call) and _is_root(node.func)) or \
                (isinstance(node, ast.Raise) and node.exc is not None and _is_root(node.exc))
            if root:
                found.append(f"{path.relative_to(PKG).as_posix()}: {ast.unparse(node)}")
    assert not found, "raise the class of the tree that says what happened:\n" + \
        "\n".join(found)


def test_error_classes_are_imported_from_vmis_errors_only():
    names = {cls.__name__ for cls in _vmis_error_classes()} | {"VmisError"}
    found = []
    root = PKG.parents[1]
    for path in sorted([*root.glob("src/**/*.py"), *root.glob("tests/**/*.py"),
                        *root.glob("bench/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module not in (None, "vmis.errors") \
                    and (node.module or "").startswith("vmis"):
                found += [f"{path.relative_to(root)}: {alias.name} from {node.module}"
                          for alias in node.names if alias.name in names]
    assert not found, "import errors from vmis.errors:\n" + "\n".join(found)


def _tree() -> list[type[errors.VmisError]]:
    return sorted(_vmis_error_classes(), key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", _tree(), ids=lambda cls: cls.__name__)
def test_error_from_json_rebuilds_every_class(cls):
    rebuilt = api_errors.error_from_json({"error": "it failed", "type": cls.__name__,
                                          "code": "busy"})
    assert type(rebuilt) is cls and str(rebuilt) == "it failed"
    if issubclass(cls, errors.RequestRefused):
        assert rebuilt.code == "busy"
    again = api_errors.error_from_json(api_errors.error_to_json(rebuilt))
    assert type(again) is cls
    assert api_errors.error_to_json(again) == api_errors.error_to_json(rebuilt)


#: one error of each class that carries more than its message (built when used)
CARRYING = {
    "ServiceError": lambda: errors.ServiceError("exists", "/srv/a exists"),
    "RemoteServiceError": lambda: errors.RemoteServiceError("denied", "the guest refuses"),
    "MonitorError": lambda: errors.MonitorError("QEMU has no drive 'cd0'", "DeviceNotFound"),
    "UnknownOSError": lambda: errors.UnknownOSError("No guest OS matches 'Windows 8.2'",
                                                    ["Windows 8.1", "Windows 8"]),
    "KvpSizeError": lambda: errors.KvpSizeError("value", 2050, 2048),
    "SnapshotError": lambda: errors.SnapshotError("the snapshot command failed (exit 1)",
                                                  "no space left"),
    "ImageBuildError": lambda: errors.ImageBuildError("debootstrap", "exit 1",
                                                      Path("/var/cache/vmis/build.log")),
    "FreezeError": lambda: errors.FreezeError("/srv", OSError(16, "Device or resource busy")),
    "ThawError": lambda: errors.ThawError([("/srv", 22), ("/var", None)]),
}


@pytest.mark.parametrize("name", sorted(CARRYING))
@pytest.mark.parametrize("type_key", ["type", "class", "error_type"])
def test_an_error_keeps_its_class_message_and_attributes_over_the_api(name, type_key):
    exc = CARRYING[name]()
    body = api_errors.error_to_json(exc, type_key=type_key)
    rebuilt = api_errors.error_from_json(body, type_key=type_key)
    assert type(rebuilt) is type(exc) and str(rebuilt) == str(exc)
    assert api_errors.error_to_json(rebuilt, type_key=type_key) == body
    declared = set(api_errors.attributes_of(type(exc)))
    assert set(vars(exc)) <= declared, "declare the attributes in errors.py, as annotations"
    assert {name for name in declared if getattr(exc, name) is not None} <= set(body)


def test_an_answer_that_names_no_class_is_the_managers_fault():
    rebuilt = api_errors.error_from_json({"error": "Internal Server Error"})
    assert type(rebuilt) is errors.ManagerApiError and str(rebuilt) == "Internal Server Error"
    refused = api_errors.error_from_json({"error": "no", "type": "RemoteServiceError"})
    assert refused.code == "failed"  # an error reply without a code (docs/protocol.md §5.1)


@pytest.mark.parametrize("cls", _tree(), ids=lambda cls: cls.__name__)
def test_a_class_answers_500_only_as_a_server_fault(cls):
    status = api_errors.status_for(cls.__new__(cls))
    assert (status == 500) == (cls in api_errors.SERVER_FAULTS), \
        f"{cls.__name__} answers {status}: give it a row in STATUS_BY_ERROR (vmis/api/errors.py)"


async def test_the_agent_answers_a_refusal_it_received_as_failed(tmp_path):
    from vmis.guest.agent import Agent
    from vmis.guest.config import AgentConfig

    answers: list[tuple[str, str]] = []

    class Channel:
        def fail(self, request: RequestReceived, code: str, message: str) -> None:
            answers.append((code, message))

    async def refuses(request: RequestReceived) -> bytes:
        raise errors.ServiceError("busy", "the filesystems are frozen")

    async def relays(request: RequestReceived) -> bytes:
        raise errors.RemoteServiceError("denied", "the host refused")

    agent = Agent(AgentConfig(), tmp_path, [])
    request = RequestReceived(service=1, op=1, id=1, payload=b"")
    for handler in (refuses, relays):
        await agent._answer(Channel(), request, handler)  # type: ignore[arg-type]
    assert answers == [("busy", "the filesystems are frozen"), ("failed", "the host refused")]
