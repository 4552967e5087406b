"""The services' wire helpers (``services/*/__init__.py`` and friends) and the json codec.

Each helper gets what a peer can put in a payload, and may raise only what
its docstring names:

- ``decode_json``, ``decode_json_raw``: RemoteProtocolError;
- ``decode_beat``: RemoteProtocolError;
- ``parse_pool``: NotFoundError; ``check_item``: KvpFormatError (KvpSizeError);
  ``wire_text``, ``pool_name`` of a parsed pool: nothing;
- ``Sample.from_json``: RemoteProtocolError; ``best_of``: ValueError;
  ``decide``, ``state_of``, ``sock_sample``, ``offset_ns``, ``rtt_ns``: nothing;
- ``parse_version_list``: RemoteProtocolError; ``negotiate``: nothing;
- the host's reading of a HELLO answer (``links.vmis_agent``): RemoteProtocolError;
- ``split_path``, ``check_name``, ``parse_roots``, ``check_env``,
  ``resolve_program``: ServiceError; ``resume_token``, ``exit_status``: nothing.
"""

from __future__ import annotations

import contextlib

import atheris

from support.fuzz.values import json_object, json_payload, json_raw_payload, json_value, text
from vmis.errors import (
    KvpFormatError,
    NotFoundError,
    RemoteProtocolError,
    ServiceError,
)
from vmis.links.vmis_agent import _hello_answer
from vmis.protocol.services import FRAMEWORK_VERSIONS, negotiate, parse_version_list
from vmis.protocol.session import decode_json, decode_json_raw
from vmis.services.catalog import CATALOG
from vmis.services.fcopy import resume_token
from vmis.services.fcopy.paths import check_name, parse_roots, split_path
from vmis.services.heartbeat import decode_beat
from vmis.services.kvp import check_item, parse_pool, pool_name, wire_text
from vmis.services.timesync import Mode, Sample, best_of, decide, sock_sample, state_of
from vmis.services.vmsession import exit_status
from vmis.services.vmsession.policy import check_env, resolve_program

_OUR_SERVICES = {s.key: list(s.versions) for s in CATALOG}


def _json(fdp: atheris.FuzzedDataProvider) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_json(json_payload(fdp))
    try:
        body, raw = decode_json_raw(json_raw_payload(fdp))
        assert isinstance(body, dict) and isinstance(raw, memoryview)
    except RemoteProtocolError:
        pass


def _heartbeat(fdp: atheris.FuzzedDataProvider) -> None:
    try:
        seq, health = decode_beat(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12)))
        assert health in ("ok", "critical") and 0 <= seq < 2**64
    except RemoteProtocolError:
        pass


def _kvp(fdp: atheris.FuzzedDataProvider) -> None:
    raw = json_value(fdp)
    try:
        if isinstance(raw, str | int) and not isinstance(raw, bool):
            pool_name(parse_pool(raw))
    except NotFoundError:
        pass
    key, value = text(fdp), text(fdp)
    with contextlib.suppress(KvpFormatError):
        check_item(key, value)
    wire_text(key).encode("utf-8")


def _timesync(fdp: atheris.FuzzedDataProvider) -> None:
    samples = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        with contextlib.suppress(RemoteProtocolError):
            samples.append(Sample.from_json(json_object(fdp, keys=["t1", "t2", "t3", "t4"])))
    try:
        best = best_of(samples)
    except ValueError:
        return
    offset, rtt = best.offset_ns, best.rtt_ns
    mode = fdp.PickValueInList(list(Mode))
    action = decide(offset, mode=mode, sync=fdp.ConsumeBool(),
                    step_threshold_ns=fdp.ConsumeIntInRange(0, 10**12),
                    noise_ns=max(rtt // 2, 0))
    state_of(action, offset)
    sock_sample(best.t2, offset)


def _versions(fdp: atheris.FuzzedDataProvider) -> None:
    try:
        framework = parse_version_list(json_value(fdp))
        offered = {text(fdp): parse_version_list(json_value(fdp))
                   for _ in range(fdp.ConsumeIntInRange(0, 3))}
        negotiate(framework, offered, FRAMEWORK_VERSIONS, _OUR_SERVICES)
    except RemoteProtocolError:
        pass
    with contextlib.suppress(RemoteProtocolError):
        _hello_answer(json_object(fdp, keys=["services", "agent", "framework"]))


def _fcopy(fdp: atheris.FuzzedDataProvider) -> None:
    value = json_value(fdp) if fdp.ConsumeBool() else text(fdp)
    # parse_roots reads the agent's configuration (a string), the others a peer's values
    for check in (split_path, check_name, parse_roots) if isinstance(value, str) else \
            (split_path, check_name):
        with contextlib.suppress(ServiceError):
            check(value)
    resume_token(text(fdp), text(fdp), fdp.ConsumeInt(8), fdp.ConsumeInt(8), text(fdp))


def _vmsession(fdp: atheris.FuzzedDataProvider) -> None:
    with contextlib.suppress(ServiceError):
        check_env(json_value(fdp) if fdp.ConsumeBool() else json_object(fdp))
    name = text(fdp)
    if "\0" not in name:  # the START handler refuses NUL before it looks a program up
        with contextlib.suppress(ServiceError):
            resolve_program(name, text(fdp))
    # the host hands it integers only (RemoteCommand._on_exit drops anything else)
    status = exit_status(fdp.ConsumeInt(4) if fdp.ConsumeBool() else None,
                         fdp.ConsumeIntInRange(0, 64) or None)
    assert 0 <= status <= 255 + 64


_TARGETS = [_json, _heartbeat, _kvp, _timesync, _versions, _fcopy, _vmsession]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    fdp.PickValueInList(_TARGETS)(fdp)
