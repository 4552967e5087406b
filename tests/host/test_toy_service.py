"""A new service is one package and one catalogue line (docs/architecture.md, "Add a service").

The toy service (tests/support/toy_service) is added the way a real one
would be, with nothing else edited: it gets its Get-VMIntegrationService row,
the host/guest rules, version negotiation and the status table, and its host
half its typed per-VM state, requests and notifications.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.pair import eventually, host_guest_pair
from support.toy_service import catalogue_line

from vmis.errors import ServiceUnavailable
from vmis.services.catalog import CATALOG, ServiceSpec, StartupType
from vmis.services.status import OperationalStatus


@pytest.fixture
def toy() -> Iterator[ServiceSpec]:
    with catalogue_line() as spec:
        yield spec


def toy_running(pair) -> bool:
    return bool(pair.agent.manager.services["toy"].running)


def toy_host(pair):
    from support.toy_service.host import ToyHost

    return pair.manager.service(ToyHost)


async def test_the_toy_has_its_row_runs_and_its_host_half_keeps_typed_state(short_tmp, toy):
    from support.toy_service.host import ToyHost

    async with host_guest_pair(short_tmp) as pair:
        rows = (await pair.api.get("/v1/services", params={"vm": "DemoVM"})).json()
        assert [r["Name"] for r in rows] == [s.host_name for s in CATALOG.host_services]
        row = next(r for r in rows if r["Name"] == "Toy Service")
        assert (row["Enabled"], row["PrimaryStatusDescription"], row["Version"]) == \
            (True, "OK", "1.1")
        assert toy_running(pair)
        assert await toy_host(pair).echo("DemoVM", "hello") == "hello"
        part = pair.session.part(ToyHost)
        await eventually(lambda: part.answered == 1)
        assert part.runs == 1  # its after-connect step ran once for the one session


async def test_the_host_guest_rules_hold_for_the_toy(short_tmp, toy):
    async with host_guest_pair(short_tmp) as pair:
        # rule 3: the host's switch starts and stops the guest service
        await pair.manager.set_enabled(["DemoVM"], ["Toy Service"], False)
        assert not toy_running(pair)
        with pytest.raises(ServiceUnavailable, match="disabled on the host"):
            await toy_host(pair).echo("DemoVM", "x")
        # rule 4: started in the guest while disabled on the host: stopped again
        await pair.agent.manager.guest_start(toy)
        await eventually(lambda: not toy_running(pair), timeout=5)
        await pair.manager.set_enabled(["DemoVM"], ["toy*"], True)
        assert toy_running(pair)
        # rule 5: stopped in the guest while enabled on the host: started again
        await pair.agent.manager.guest_stop(toy)
        await eventually(lambda: toy_running(pair), timeout=5)
        # rule 6: disabled in the guest: the host cannot start it, and says so
        await pair.agent.manager.guest_set_startup(toy, StartupType.DISABLED)
        row = await eventually(
            lambda: (r := pair.session.status(toy)).primary is OperationalStatus.ERROR and r)
        assert "vmictoy is disabled in the guest" in row.reason


@pytest.mark.parametrize("offered, primary, reason", [
    ([[1, 0]], OperationalStatus.DEGRADED, "guest speaks version 1.0, the host 1.1"),
    ([[2, 0]], OperationalStatus.PROTOCOL_MISMATCH, "speaks no version of Toy Service"),
])
async def test_the_toy_is_negotiated_like_any_service(short_tmp, toy, offered, primary, reason):
    async with host_guest_pair(short_tmp, versions={"toy": [tuple(v) for v in offered]}) as pair:
        row = await eventually(lambda: (r := pair.session.status(toy)).primary is primary and r)
        assert reason in row.reason


async def test_a_guest_without_the_toy_shows_it_not_offered(short_tmp, toy):
    from vmis.guest.services import available_services

    older = [s for s in available_services() if s.spec.key != "toy"]
    async with host_guest_pair(short_tmp, services=older) as pair:
        row = pair.session.status(toy)
        assert row.primary is OperationalStatus.NO_CONTACT and row.guest_state == "absent"
        assert "does not offer Toy Service" in row.reason
