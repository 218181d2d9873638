"""Scenario 6, ``flaky``: 2,000 calls to a real flaky HTTP API on 127.0.0.1, cap 32, with httpx.

The app, the systems, the server and the ideal are :mod:`benchmarks.flaky`'s
(also runnable alone: ``python -m benchmarks.flaky``).  One server process per
group (each run of each system uses its own path prefix, so every system meets
the same answers); a memory child starts its own.  Rows: every system's wall
time, the ideal (every one of the 32 slots busy with an attempt all the time)
and the perfect pool (the same answers through a pool with no overhead: the
floor, since the Retry-After of the last 429s cannot be hidden).

Targets (the performance contract in README.md): trioflow faster than each
peer, and within 1.15x of the ideal.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import flaky
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
    measure_in_child,
    series,
)
from ..localapi import flaky_schedule, flaky_work

PEERS = tuple(s for s in flaky.SYSTEMS if s != "trioflow")


def plan(mode: Mode) -> list[Group]:
    if mode == "smoke":  # Retry-After 0, so the tiny run takes no second-long waits
        return [Group("flaky", 16, flaky.CAP, flaky.SYSTEMS, 1, params={"retry_after": 0})]
    n, repeats = (500, 1) if mode == "quick" else (flaky.N, 3)
    return [Group("flaky", n, flaky.CAP, flaky.SYSTEMS, repeats, params={"retry_after": 1})]


def _retry_after(group: Group) -> int:
    return int(group.params.get("retry_after", 1))


def once(group: Group, system: str) -> tuple[float, float]:
    return flaky.once(system, group.n, retry_after=_retry_after(group))


def run(group: Group, context: Context) -> Result:
    """Every system ``repeats`` times against one server (order rotated each round), then memory."""
    figures = {system: Figure() for system in group.systems}
    _, attempts = flaky_work(0, group.n, flaky.MAX_ATTEMPTS)
    systems = group.systems
    with flaky.Server(0, attempts * len(systems) * group.repeats + 100, _retry_after(group)) as server:
        for rep in range(group.repeats):
            for system in systems[rep % len(systems):] + systems[: rep % len(systems)]:
                context.progress.status(f"{group.label}: {system} run {rep + 1}/{group.repeats}")
                wall, cpu = flaky.time_system(system, server.url, group.n, prefix=f"/{system}/{rep}")
                figures[system].runs.append(wall)
                figures[system].cpu.append(cpu)
                context.progress.advance()
    if context.memory:
        for system in systems:
            context.progress.status(f"{group.label}: peak memory of {system} (a child process)")
            got = measure_in_child(group, system)
            figures[system].peak_mb = got["peak_mb"]
            figures[system].delta_mb = got["peak_mb"] - got["before_mb"]
            context.progress.advance()
    figures["ideal"] = Figure(runs=[flaky.ideal(group.n)], note="computed")
    figures["perfect pool"] = Figure(
        runs=[flaky_schedule(0, group.n, flaky.CAP, flaky.MAX_ATTEMPTS, flaky.WAIT, flaky.BACKOFF,
                             _retry_after(group))],
        note="computed",
    )
    return Result(group, figures)


def steps(group: Group, memory: bool) -> int:
    return len(group.systems) * (group.repeats + (1 if memory else 0))


def targets(results: Sequence[Result]) -> list[Target]:
    done = [r for r in results if r.status == "ok" and "trioflow" in r.figures]
    if not done:
        return []
    result = max(done, key=lambda r: r.group.n)
    ours = result.figures["trioflow"].median
    where = f"flaky, N={result.group.n:,}, cap {flaky.CAP}, median of {result.group.repeats}"
    out = [at_most(f"flaky: trioflow vs {peer}", ours / result.figures[peer].median, 1.0, where,
                   limit_text="< 1x (faster)") for peer in PEERS if peer in result.figures]
    out.append(at_most("flaky: trioflow vs ideal (all 32 slots busy)", ours / result.figures["ideal"].median,
                       flaky.TARGET_IDEAL, where))
    return out


def notes(results: Sequence[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.status != "ok" or "trioflow" not in result.figures:
            continue
        ours, perfect = result.figures["trioflow"].median, result.figures["perfect pool"].median
        ideal = result.figures["ideal"].median
        lines.append(f"flaky N={result.group.n:,}: trioflow {ours:.2f} s = {ours / perfect:.2f}x the perfect pool "
                     f"({perfect:.2f} s; its own ratio to the ideal {ideal:.2f} s is {perfect / ideal:.2f}x: "
                     "the last 429s' Retry-After cannot be hidden)")
    return lines


def panels(results: Sequence[Result]) -> list[Panel]:
    points = series(results, lambda g, f: f.median / flaky.ideal(g.n), x=lambda g: f"N={g.n:,}, cap {g.cap}")
    if not points:
        return []
    return [Panel("flaky (real HTTP, 10 % 429, 3 % 500): wall time ÷ ideal", points, x_label="",
                  y_label="wall time ÷ ideal", log_y=False, reference=1.0)]


SCENARIO = Scenario(
    name="flaky",
    title="6 flaky HTTP API",
    about="2,000 httpx calls to a local HTTP server (20-200 ms, 10 % 429 Retry-After 1 s, 3 % 500), cap 32: "
          "trioflow vs PocketFlow, anyio, aiometer, and the ideal",
    plan=plan,
    once=once,
    run=run,
    steps=steps,
    targets=targets,
    notes=notes,
    panels=panels,
    labels={**flaky.LABELS, "perfect pool": "a pool with no overhead on the same answers (the floor)"},
    order=6,
    sleep_bound=True,
)
