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

__all__ = ["BUCKETS", "OUTCOMES", "Buckets", "RequestStats", "request_stats"]

#: upper bounds of the latency buckets, seconds (Prometheus' ``le``; +Inf is implied)
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                              0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: how a request ends: answered; refused by the guest service; refused before it
#: was sent (disabled, no contact, not running: ServiceUnavailable); no answer in
#: time; the channel failed or closed under it
OUTCOMES = ("ok", "refused", "unavailable", "timeout", "channel")


class Buckets:
    """Observations in fixed buckets, the shape of a Prometheus histogram: counts per
    bucket (not cumulative; the last one +Inf) and their sum. Observing allocates
    nothing."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        #: upper bounds (``le``), ascending
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        """The counts as Prometheus wants them: each includes those below."""
        total, out = 0, []
        for count in self.counts:
            total += count
            out.append(total)
        return out


class RequestStats:
    """One service's requests: how many by outcome, and the latencies of those that
    reached the guest."""

    __slots__ = ("latency", "outcomes")

    def __init__(self) -> None:
        #: outcome -> requests so far
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        #: seconds from sending to the answer or failure
        self.latency = Buckets(BUCKETS)

    def record(self, outcome: str, seconds: float | None = None) -> None:
        """Count one request; *seconds* from sending to the answer or failure, if sent."""
        self.outcomes[outcome] += 1
        if seconds is not None:
            self.latency.observe(seconds)


def request_stats() -> dict[str, RequestStats]:
    """A fresh table of every catalogued service's stats, by service key."""
    return {spec.key: RequestStats() for spec in CATALOG}
