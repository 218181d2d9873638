"""Scenario 2, ``latency``: items that each wait 50 ms (a simulated API call), against the ideal.

Systems: as ``trivial`` but PocketFlow (it has no cap), plus the computed ideal,
ceil(N / cap) x 50 ms.  Target (the performance contract in README.md): 1,000
items at cap 100 within 1.1x of the ideal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import workloads
from ..core import (
    Context,
    Figure,
    Group,
    Mode,
    Panel,
    Result,
    Scenario,
    Target,
    at_most,
    largest,
    run_timed,
    vs_ideal_panels,
)


def plan(mode: Mode) -> list[Group]:
    def group(n: int, cap: int, repeats: int) -> Group:
        return Group("latency", n, cap, workloads.LATENCY_SYSTEMS, repeats, warm_n=min(n, 2 * cap))

    if mode == "smoke":
        return [group(10, 10, 1)]
    if mode == "quick":
        return [group(1000, 100, 3)]
    return [group(1000, cap, 3) for cap in (10, 100)]


def ideal(group: Group) -> float:
    """The ideal wall time: ceil(N / cap) rounds of one latency each."""
    assert group.cap is not None
    return math.ceil(group.n / group.cap) * workloads.LATENCY


def once(group: Group, system: str) -> tuple[float, float]:
    return workloads.time_once("latency", system, group.n, group.cap)


def run(group: Group, context: Context) -> Result:
    """:func:`run_timed`, then the ideal as one more (computed) row."""
    result = run_timed(SCENARIO, group, context)
    result.figures["ideal"] = Figure(runs=[ideal(group)], note="computed")
    return result


def targets(results: Sequence[Result]) -> list[Target]:
    found = largest(results, "trioflow", lambda g: g.cap == 100)
    if found is None:
        return []
    group, ours = found
    limit = ideal(group)
    return [at_most(f"latency: wall time vs ideal {limit:g} s", ours.median / limit, 1.1,
                    f"latency, N={group.n:,}, cap 100")]


def panels(results: Sequence[Result]) -> list[Panel]:
    """Wall time ÷ ideal per cap, a bar per system (the ideal is 1)."""
    return vs_ideal_panels(results, f"latency ({workloads.LATENCY * 1000:g} ms per item): wall time ÷ ideal", ideal)


SCENARIO = Scenario(
    name="latency",
    title="2 latency",
    about=f"1,000 items of await sleep({workloads.LATENCY:g}) (a simulated API call), caps 10/100, vs the ideal",
    plan=plan,
    once=once,
    run=run,
    targets=targets,
    panels=panels,
    labels={s: workloads.SYSTEM_LABELS[s] for s in (*workloads.LATENCY_SYSTEMS, "ideal")},
    order=2,
    sleep_bound=True,
)
