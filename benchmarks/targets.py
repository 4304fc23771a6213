"""The targets the issues set for benchmark figures, checked by the report (``make bench``).

Each target names a figure by its dotted path in a benchmark's result
(``attach_bench.ratios.attach_speedup_vs_cni``), a direction and a bound,
and where the target comes from.  :func:`check` tells how far a result is
from each: ``score`` is the figure over its bound (at least, ``>=``) or the
bound over the figure (at most, ``<=``), so 1.0 or more means met, whichever
the direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """``figure`` (``benchmark.metrics.key``, dotted) must be ``op`` (``>=`` or ``<=``) ``bound``."""

    figure: str
    op: str
    bound: float
    source: str

    @property
    def benchmark(self) -> str:
        return self.figure.split(".", 1)[0]


#: issue 22's acceptance table
TARGETS = [
    Target("attach_bench.ratios.attach_speedup_vs_cni", ">=", 10, "issue 22"),
    Target("attach_bench.ratios.detach_speedup_vs_cni", ">=", 10, "issue 22"),
    Target("api_bench.metrics.connect_disconnect_p99_ms", "<=", 60, "issue 22"),
    Target("api_bench.metrics.list_networks_rps", ">=", 2500, "issue 22"),
    Target("convergence_bench.metrics.n30.reachable_p50_s", "<=", 0.3, "issue 22"),
    Target("convergence_bench.metrics.n30.reachable_p99_s", "<=", 0.6, "issue 22"),
    Target("convergence_bench.metrics.procs_n30.reachable_p50_s", "<=", 0.3, "issue 22"),
    Target("convergence_bench.metrics.procs_n30.reachable_p99_s", "<=", 0.6, "issue 22"),
    Target("cli_bench.metrics.cli_network_ls_ms_p50", "<=", 100, "issue 22"),
    Target("memory_bench.metrics.rss_mib_1000_endpoints", "<=", 60, "issue 22"),
]


def lookup(results: dict[str, dict[str, Any]], figure: str) -> float | None:
    """The number at ``figure`` (``benchmark.section.key...``) in ``results`` (by benchmark name), or None."""
    name, _, path = figure.partition(".")
    value: Any = results.get(name)
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Verdict:
    """A target against a run: the figure (None: not measured), its score (>= 1: met) and whether it is met."""

    target: Target
    value: float | None

    @property
    def score(self) -> float | None:
        if self.value is None:
            return None
        if self.target.op == ">=":
            return self.value / self.target.bound
        return self.target.bound / self.value if self.value > 0 else float("inf")

    @property
    def met(self) -> bool | None:
        score = self.score
        return None if score is None else score >= 1.0


def check(results: dict[str, dict[str, Any]], targets: list[Target] = TARGETS) -> list[Verdict]:
    """Every target against ``results`` (benchmark name -> its result)."""
    return [Verdict(t, lookup(results, t.figure)) for t in targets]
