"""Scenario 5, ``api``: a batch against a throttling API whose limits the client does not know.

The simulation, the systems and the ideal are :mod:`benchmarks.api`'s (also
runnable alone: ``python -m benchmarks.api``).  One group per case (steady or
dropping rate, rejections free or costing a token); each system runs once per
seed (``repeats`` seeds), in virtual time under ``MockClock``, so the figures
are virtual seconds and do not depend on the machine's load.  Each figure's
``extra`` holds ``time_ideal`` (time ÷ ideal, median over seeds),
``throttled_pct`` and ``finished`` (1 if every seed finished).

Targets (the performance contract in README.md): trioflow's adaptive
Throttle within 1.2x of the ideal with at most 6 % of attempts throttled in
all four cases; every fixed cap fails at least one case.  Isolated: the
PocketFlow peer runs on trio-asyncio (to share the virtual clock).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .. import api
from ..core import (
    Context,
    ExtraTable,
    Figure,
    Group,
    Mode,
    Panel,
    Result,
    Scenario,
    Target,
    at_least,
    at_most,
    series,
)

FIXED = ("cap-25", "cap-50")


def plan(mode: Mode) -> list[Group]:
    n, seeds = {"smoke": (30, 1), "quick": (1000, 1), "full": (api.N, api.SEEDS)}[mode]
    return [Group("api", n, None, api.SYSTEMS, seeds, variant=case, params={"case": case}) for case in api.CASES]


def run(group: Group, context: Context) -> Result:
    """Every system once per seed (``repeats`` seeds), in virtual time; the ideal as a computed row."""
    case = str(group.params["case"])
    figures: dict[str, Figure] = {}
    for system in group.systems:
        outcomes = []
        for seed in range(group.repeats):
            context.progress.status(f"{group.label}: {system} seed {seed}")
            outcomes.append(api.run_once(system, case, seed, group.n))
            context.progress.advance()
        failed = [o.error for o in outcomes if not o.finished]
        figures[system] = Figure(
            runs=[o.seconds if o.finished else o.stopped_at for o in outcomes],
            note="virtual s" + (f"; did not finish: {failed[0]}" if failed else ""),
            extra={
                "time_ideal": statistics.median(o.ratio for o in outcomes) if not failed else float("inf"),
                "worst_time_ideal": max(o.ratio for o in outcomes),
                "throttled_pct": 100 * statistics.median(o.throttled_share for o in outcomes),
                "worst_throttled_pct": 100 * max(o.throttled_share for o in outcomes),
                "attempts": statistics.median(o.attempts for o in outcomes),
                "finished": 0.0 if failed else 1.0,
            },
        )
    ideal = api.Provider.for_case(case, 0).ideal(group.n)
    figures["ideal"] = Figure(runs=[ideal], note="computed")
    return Result(group, figures)


def steps(group: Group, memory: bool) -> int:
    return len(group.systems) * group.repeats


def _passes(figure: Figure) -> bool:
    extra = figure.extra
    return bool(
        extra.get("finished")
        and extra["worst_time_ideal"] <= api.TARGET_TIME
        and extra["worst_throttled_pct"] <= 100 * api.TARGET_THROTTLED
    )


def targets(results: Sequence[Result]) -> list[Target]:
    out: list[Target] = []
    done = [r for r in results if r.status == "ok" and "trioflow" in r.figures]
    for result in done:
        ours = result.figures["trioflow"].extra
        where = f"api {result.group.variant}, N={result.group.n:,}, {result.group.repeats} seed(s), worst seed"
        out.append(at_most(f"api {result.group.variant}: adaptive Throttle time vs ideal",
                           ours["worst_time_ideal"], api.TARGET_TIME, where))
        out.append(at_most(f"api {result.group.variant}: attempts throttled", ours["worst_throttled_pct"],
                           100 * api.TARGET_THROTTLED, where, unit=" %"))
    if len(done) == len(api.CASES):
        for cap in FIXED:
            failing = sum(1 for r in done if cap in r.figures and not _passes(r.figures[cap]))
            out.append(at_least(f"api: {cap} fails at least one case", failing, 1, "api, all four cases",
                                unit=" case(s)"))
    return out


def tables(results: Sequence[Result]) -> list[ExtraTable]:
    done = [r for r in results if r.status == "ok"]
    if not done:
        return []
    rows = []
    for result in done:
        for system in api.SYSTEMS:
            figure = result.figures.get(system)
            if figure is None:
                continue
            extra = figure.extra
            time_ideal = (
                f"{extra['time_ideal']:.2f}x (worst {extra['worst_time_ideal']:.2f}x)"
                if extra["finished"]
                else "did not finish"
            )
            rows.append([result.group.variant, system, time_ideal,
                         f"{extra['throttled_pct']:.1f} % (worst {extra['worst_throttled_pct']:.1f} %)",
                         "meets" if _passes(figure) else "misses"])
    return [ExtraTable("api: time ÷ ideal and attempts throttled (virtual time, median over seeds)",
                       ("case", "system", "time ÷ ideal", "throttled", "1.2x / 6 %"), rows)]


def notes(results: Sequence[Result]) -> list[str]:
    done = [r for r in results if r.status == "ok"]
    lines = []
    for system in api.SYSTEMS:
        missed = [r.group.variant for r in done if system in r.figures and not _passes(r.figures[system])]
        if missed:
            lines.append(f"api: {system} misses 1.2x / 6 % in: {', '.join(missed)}")
    return lines


def panels(results: Sequence[Result]) -> list[Panel]:
    """Time ÷ ideal and % throttled per case (bars), and trioflow's rate against the provider's limit."""
    done = [r for r in results if r.status == "ok"]
    if not done:
        return []
    finished = series(done, lambda g, f: f.extra["time_ideal"] if f.extra.get("finished") else None,
                      x=lambda g: g.variant)
    throttled = series(done, lambda g, f: f.extra.get("throttled_pct"), x=lambda g: g.variant)
    out = [
        Panel("api: time ÷ ideal (virtual time; unfinished runs left out)", finished, x_label="",
              y_label="time ÷ ideal", log_x=False, log_y=True, reference=1.0),
        Panel("api: % of attempts throttled", throttled, x_label="", y_label="% throttled", log_x=False,
              log_y=False, reference=100 * api.TARGET_THROTTLED),
    ]
    for case in ("dropping free",):
        if any(r.group.variant == case for r in done):
            n = next(r.group.n for r in done if r.group.variant == case)
            trace = api.rate_trace(case, 0, n)  # deterministic: the same run again, for its rate log
            out.append(Panel(f"api {case}: trioflow's rate vs the provider's limit (seed 0)", trace,
                             x_label="virtual seconds", y_label="requests / s", log_x=False, log_y=False))
    return out


SCENARIO = Scenario(
    name="api",
    title="5 throttled API",
    about="3,000 calls to a simulated API (hidden 50/s, burst 10; steady or dropping to 20/s; rejections free "
          "or costing), MockClock: adaptive Throttle vs fixed caps, PocketFlow, aiometer, anyio",
    plan=plan,
    run=run,
    steps=steps,
    targets=targets,
    tables=tables,
    notes=notes,
    panels=panels,
    labels={**api.LABELS, "ideal": "ideal: when the provider could admit the last call, + the median latency"},
    order=5,
    isolated=True,
)
