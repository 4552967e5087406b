"""Counts and latencies of the host halves' requests to guests, per service.

Every request a host half sends goes through :meth:`VmSession.request
<vmis.host.session.VmSession.request>`, which records it here: one
:class:`RequestStats` per service, shared by all VMs (a per-VM histogram
would make a scrape of a thousand VMs a hundred thousand lines). Recording
allocates nothing: two counter increments and a bisection into fixed
buckets. The metrics (docs/metrics.md) read these at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left

from vmis.services.catalog import CATALOG

__all__ = ["BUCKETS", "OUTCOMES", "RequestStats", "request_stats"]

#: upper bounds of the latency buckets, seconds (Prometheus' ``le``; +Inf is implied)
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                              0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: how a request ends: answered; refused by the guest service; refused before it
#: was sent (disabled, no contact, not running: ServiceUnavailable); no answer in
#: time; the channel failed or closed under it
OUTCOMES = ("ok", "refused", "unavailable", "timeout", "channel")


class RequestStats:
    """One service's requests: how many by outcome, and a latency histogram of those
    that reached the guest (the Prometheus shape: counts per bucket, their sum)."""

    __slots__ = ("buckets", "outcomes", "seconds")

    def __init__(self) -> None:
        #: outcome -> requests so far
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        #: requests per latency bucket (not cumulative), the last one +Inf
        self.buckets = [0] * (len(BUCKETS) + 1)
        #: total seconds of the requests in :attr:`buckets`
        self.seconds = 0.0

    def record(self, outcome: str, seconds: float | None = None) -> None:
        """Count one request; *seconds* from sending to the answer or failure, if sent."""
        self.outcomes[outcome] += 1
        if seconds is not None:
            self.buckets[bisect_left(BUCKETS, seconds)] += 1
            self.seconds += seconds

    def cumulative(self) -> list[int]:
        """The counts per bucket as Prometheus wants them: each includes those below."""
        total, out = 0, []
        for count in self.buckets:
            total += count
            out.append(total)
        return out


def request_stats() -> dict[str, RequestStats]:
    """A fresh table of every catalogued service's stats, by service key."""
    return {spec.key: RequestStats() for spec in CATALOG}
