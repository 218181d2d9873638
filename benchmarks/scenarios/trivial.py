"""Scenario 1, ``trivial``: N items of ``await sleep(0)`` from a generator, so the engine is all there is.

Systems: trioflow's ``ParallelBatchNode``; PocketFlow's ``AsyncParallelBatchNode``
(``asyncio.gather``, no cap whatever the row says); asyncio ``gather`` + ``Semaphore``;
``aiometer.run_on_each`` on Trio; a raw Trio nursery, a task per item (+ a
``CapacityLimiter`` when capped); the leanest hand-written Trio pool (``trio-lean``, the
floor: workers share one iterator and await the sleep inline); and the same pool with a
coroutine call per item (``trio-pool``, a second reference).  With no cap the two pools
sit out: a pool of N workers is the raw nursery.

Targets (the performance contract in README.md), at 1,000,000 items, cap 64: within 1.1x
of the leanest pool; faster than PocketFlow by at least 0.9 x the floor's own speed-up
over it; at most 1/10 of PocketFlow's peak memory.  With no cap, at the largest N: within
1.3x of the raw nursery.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import workloads
from ..core import (
    Group,
    Mode,
    Panel,
    Result,
    Scenario,
    Target,
    at_least,
    at_most,
    cpu_ratio,
    figures_in,
    largest,
    ratio,
    series,
    us_per_item,
)

FLOOR = "trio-lean"
FLOOR_CAP = 64
FLOOR_PEERS = ("trioflow", "pocketflow", FLOOR, "trio-pool")  # the systems the 1M targets name


def plan(mode: Mode) -> list[Group]:
    """Caps 1 / 8 / 64 / none from 1,000 items; the largest size (1M in full) for the floor's peers only."""
    groups: list[Group] = []

    def add(n: int, cap: int | None, repeats: int, systems: Sequence[str] = workloads.TRIVIAL_SYSTEMS) -> None:
        if cap is None:
            systems = [s for s in systems if s not in workloads.POOLS]
        groups.append(Group("trivial", n, cap, tuple(systems), repeats))

    if mode == "smoke":
        for cap in (8, None):
            add(200, cap, 1)
    elif mode == "quick":
        for cap in (1, 8, 64, None):
            add(1000, cap, 3)
        for cap in (64, None):
            add(10_000, cap, 3)
        add(100_000, FLOOR_CAP, 3, FLOOR_PEERS)
    else:
        for cap in (1, 8, 64, None):
            add(1000, cap, 5)
            add(10_000, cap, 5)
        for cap in (64, None):
            add(100_000, cap, 3)
        add(1_000_000, FLOOR_CAP, 3, FLOOR_PEERS)
    return groups


def once(group: Group, system: str) -> tuple[float, float]:
    return workloads.time_once("trivial", system, group.n, group.cap)


def targets(results: Sequence[Result]) -> list[Target]:
    out: list[Target] = []
    tf = largest(results, "trioflow", lambda g: g.cap == FLOOR_CAP)
    if tf is not None:
        group, ours = tf
        where = f"trivial, N={group.n:,}, cap {FLOOR_CAP}"
        figures = figures_in(results, group)
        floor, pf = figures.get(FLOOR), figures.get("pocketflow")
        if floor is not None:
            out.append(at_most("time vs the leanest Trio pool (the floor)", ratio(ours, floor), 1.1, where,
                               cpu=cpu_ratio(ours, floor)))
        if pf is not None and floor is not None:
            need = 0.9 * ratio(pf, floor)
            out.append(at_least("faster than PocketFlow", ratio(pf, ours), need, where, cpu=cpu_ratio(pf, ours),
                                limit_text=f">= 0.9 x the floor's {ratio(pf, floor):.2f}x = {need:.2f}x"))
        if pf is not None and ours.peak_mb and pf.peak_mb:
            out.append(at_most("peak memory vs PocketFlow (whole process)", ours.peak_mb / pf.peak_mb, 0.1, where,
                               unit=""))
        if pf is not None and ours.delta_mb is not None and pf.delta_mb:
            out.append(at_most("memory growth of the run vs PocketFlow", ours.delta_mb / pf.delta_mb, 0.1, where,
                               unit=""))
    tf_none = largest(results, "trioflow", lambda g: g.cap is None)
    if tf_none is not None:
        group, ours = tf_none
        raw = figures_in(results, group).get("trio-nursery")
        if raw is not None:
            out.append(at_most("no cap: time vs raw Trio nursery", ratio(ours, raw), 1.3,
                               f"trivial, N={group.n:,}, no cap", cpu=cpu_ratio(ours, raw)))
    return out


def panels(results: Sequence[Result]) -> list[Panel]:
    """µs/item and peak MB against N, at cap 64 (or the largest cap run) and with no cap."""
    out: list[Panel] = []
    caps = {r.group.cap for r in results if r.group.cap is not None}
    shown = FLOOR_CAP if FLOOR_CAP in caps or not caps else max(caps)
    for cap in (shown, None):
        at_cap = [r for r in results if r.group.cap == cap]
        times = series(at_cap, us_per_item)
        peaks = series(at_cap, lambda g, f: f.peak_mb)
        name = f"trivial, cap {cap}" if cap is not None else "trivial, no cap"
        if times:
            out.append(Panel(f"{name}: µs per item", times))
        if peaks:
            out.append(Panel(f"{name}: peak MB of a fresh process", peaks, y_label="peak MB"))
    return out


SCENARIO = Scenario(
    name="trivial",
    title="1 trivial",
    about="N trivial items (await sleep(0)) from a generator; caps 1/8/64/none; 1M at cap 64 vs the leanest pool",
    plan=plan,
    once=once,
    targets=targets,
    panels=panels,
    labels={s: workloads.SYSTEM_LABELS[s] for s in workloads.TRIVIAL_SYSTEMS},
    order=1,
)
