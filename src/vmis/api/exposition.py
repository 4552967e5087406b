"""Prometheus' text exposition format (version 0.0.4), written fast.

prometheus-client's own writer validates and escapes every label of every
sample through its general machinery: for a thousand VMs (twenty thousand
samples) that took 0.4 to 1 s a scrape. The names here are the vmis
metrics' own and known to be valid, so a sample is one f-string; only label
values are escaped, and a VM's label once per scrape (:func:`label`).
tests/api/test_metrics.py reads the output back with prometheus-client's parser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from prometheus_client.utils import floatToGoString

__all__ = ["Family", "label", "render"]

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def label(name: str, value: str) -> str:
    """One ``name="value"`` pair, the value escaped as the format requires."""
    return f'{name}="{value.translate(_ESCAPES)}"'


def _number(value: float) -> str:
    if value.__class__ is int:
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() else repr(value)


class Family:
    """One metric: its ``# HELP`` and ``# TYPE`` lines and its samples.

    :param kind: ``gauge``, ``counter`` (*name* without ``_total``: added to each
        sample) or ``histogram``.
    """

    __slots__ = ("help", "kind", "lines", "name", "sample")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        #: the samples' name: a counter's ends in _total
        self.sample = name + "_total" if kind == "counter" else name
        self.lines: list[str] = []

    def add(self, labels: str, value: float) -> None:
        """One sample; *labels* are ``label()`` pairs joined by commas ("" for none)."""
        number = str(value) if value.__class__ is int else _number(value)
        self.lines.append(f"{self.sample}{{{labels}}} {number}\n" if labels
                          else f"{self.sample} {number}\n")

    def histogram(self, labels: str, bounds: Sequence[float], cumulative: Sequence[int],
                  total: float) -> None:
        """One histogram: *cumulative* counts for each bound and then +Inf, and their sum."""
        sep = "," if labels else ""
        # Go's spelling of the bounds (1.0, not 1): a bound is a label value
        for bound, count in zip((*map(floatToGoString, bounds), "+Inf"), cumulative,
                                strict=True):
            self.lines.append(f'{self.name}_bucket{{{labels}{sep}le="{bound}"}} {count}\n')
        braces = f"{{{labels}}}" if labels else ""
        self.lines.append(f"{self.name}_sum{braces} {_number(total)}\n")
        self.lines.append(f"{self.name}_count{braces} {cumulative[-1]}\n")

    def text(self) -> str:
        head = f"# HELP {self.sample} {self.help}\n# TYPE {self.sample} {self.kind}\n"
        return head + "".join(self.lines)


def render(families: Iterable[Family]) -> str:
    """The exposition of *families*, in their order."""
    return "".join(f.text() for f in families)
