"""Scenario 3, ``flow``: a ``ParallelBatchFlow`` over a three-node sub-flow (load, filter, save).

N param dicts of an image x filter grid, no cap and cap 64.  Systems: trioflow;
PocketFlow's ``AsyncParallelBatchFlow`` (no cap); a raw Trio nursery running the
three steps inline, no nodes (+ a ``CapacityLimiter`` when capped).  No target in
the performance contract: the table shows where a flow's per-step copies cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import workloads
from ..core import Group, Mode, Panel, Result, Scenario, series, us_per_item


def plan(mode: Mode) -> list[Group]:
    systems = workloads.FLOW_SYSTEMS
    if mode == "smoke":
        return [Group("flow", 20, None, systems, 1)]
    if mode == "quick":
        return [Group("flow", 1000, None, systems, 3)]
    return [Group("flow", n, cap, systems, 5 if n < 10_000 else 3)
            for n in (100, 1000, 10_000) for cap in (None, 64)]


def once(group: Group, system: str) -> tuple[float, float]:
    return workloads.time_once("flow", system, group.n, group.cap)


def panels(results: Sequence[Result]) -> list[Panel]:
    """µs per param set against N, one panel per cap."""
    out: list[Panel] = []
    for cap in sorted({r.group.cap for r in results}, key=lambda c: (c is not None, c or 0)):
        points = series([r for r in results if r.group.cap == cap], us_per_item)
        if points:
            name = "no cap" if cap is None else f"cap {cap}"
            out.append(Panel(f"batch flow, {name}: µs per param set", points, x_label="N param sets",
                             y_label="µs per param set (median)"))
    return out


SCENARIO = Scenario(
    name="flow",
    title="3 batch flow",
    about="ParallelBatchFlow over a three-node sub-flow, N param dicts of an image x filter grid",
    plan=plan,
    once=once,
    panels=panels,
    labels={s: workloads.SYSTEM_LABELS[s] for s in workloads.FLOW_SYSTEMS},
    order=3,
)
