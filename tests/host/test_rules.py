"""The host/guest rules of docs/hyperv.md §2, end to end through the real channel."""

import pytest
from support.pair import eventually, host_guest_pair

from vmis.errors import ServiceUnavailable
from vmis.services.catalog import StartupType, by_key
from vmis.services.heartbeat.guest import HeartbeatService
from vmis.services.status import OperationalStatus

HB = by_key("heartbeat")


def guest_running(pair, key):
    return pair.agent.manager.services[key].running


async def test_seed_state_and_rule_1_heartbeat_ok(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        status = pair.session.status(HB)
        assert status.primary is OperationalStatus.OK
        assert status.secondary is OperationalStatus.OK


async def test_rule_3_host_disable_stops_and_enable_starts(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        await pair.manager.set_enabled(["DemoVM"], ["Heartbeat"], False)
        assert not guest_running(pair, "heartbeat")
        assert pair.agent.manager.state.host_enabled["vmicheartbeat"] is False
        row = pair.session.status(HB)
        assert (row.enabled, row.primary) == (False, OperationalStatus.OK)
        await pair.manager.set_enabled(["demovm"], ["heart*"], True)
        assert guest_running(pair, "heartbeat")


async def test_rule_4_guest_start_of_host_disabled_service_is_undone(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        await pair.manager.set_enabled(["DemoVM"], ["Heartbeat"], False)
        await pair.agent.manager.guest_start(HB)
        assert guest_running(pair, "heartbeat")
        await eventually(lambda: not guest_running(pair, "heartbeat"), timeout=5)


async def test_rule_5_guest_stop_of_host_enabled_service_is_undone(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        await pair.agent.manager.guest_stop(HB)
        await eventually(lambda: guest_running(pair, "heartbeat"), timeout=5)


async def test_rule_6_guest_disabled_service_cannot_be_started_by_host(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        await pair.agent.manager.guest_set_startup(HB, StartupType.DISABLED)
        assert not guest_running(pair, "heartbeat")
        row = await eventually(
            lambda: (r := pair.session.status(HB)).primary is OperationalStatus.ERROR and r)
        assert "cannot start" in row.reason
        await pair.manager.set_enabled(["DemoVM"], ["Heartbeat"], False)
        results = await pair.manager.set_enabled(["DemoVM"], ["Heartbeat"], True)
        assert "disabled in the guest" in results[0]["Error"]
        assert not guest_running(pair, "heartbeat")
        # and it is remembered across an agent restart
        await pair.restart_agent()
        assert pair.agent.manager.state.startup["vmicheartbeat"] is StartupType.DISABLED


async def test_desired_state_is_reapplied_after_agent_restart(short_tmp):
    async with host_guest_pair(short_tmp) as pair:
        await pair.manager.set_enabled(["DemoVM"], ["Heartbeat"], False)
        await pair.restart_agent()
        # the restarted agent starts nothing the host disabled, and the host re-applies
        assert not guest_running(pair, "heartbeat")
        await eventually(lambda: pair.session.connected)
        await pair.manager.set_enabled(["DemoVM"], ["Heartbeat"], True)
        assert guest_running(pair, "heartbeat")


async def test_requests_to_unavailable_services_fail_clearly(short_tmp):
    # an older agent that offers only the heartbeat
    async with host_guest_pair(short_tmp, services=[HeartbeatService]) as pair:
        with pytest.raises(ServiceUnavailable, match="does not offer Key-Value Pair Exchange"):
            pair.session.require(by_key("kvp"))
        row = pair.session.status(by_key("kvp"))
        assert row.primary is OperationalStatus.NO_CONTACT and row.guest_state == "absent"
        await pair.manager.set_enabled(["DemoVM"], ["Heartbeat"], False)
        with pytest.raises(ServiceUnavailable, match="disabled on the host"):
            pair.session.require(HB)
