"""Scenario 4, ``bridge``: the asyncio adapters' per-call and per-run cost.

The figures come from :mod:`benchmarks.bridge` (its own module, kept by the adapters'
owner), called here as it is:

- ``run_bridge(n)``: an ``async def`` run under ``trio.run`` that returns ``{system:
  seconds per call}`` (it runs its own rounds and keeps each system's best).  The
  system whose name contains ``aio_as_trio`` is the baseline, the first other one
  ours.  Target: within 1.2x of ``aio_as_trio``.
- ``run_pocketflow_costs(n)``, when the module has it: a plain function (an ``async
  def`` is run under ``asyncio.run``) that returns ``{case: seconds per run}`` for a few
  ``adapters.pocketflow`` vs PocketFlow cases, over ``n`` runs.  Shown as the group
  ``bridge pocketflow`` and an extra table.  Target: the adapter's ``AsyncFlow.run_async``
  of three nodes (the case whose name holds ``run_async`` and ``adapter``) at most 0.5 ms
  per run.  When the function is absent, those rows are left out.

A missing ``benchmarks.bridge`` (or one without ``run_bridge``) makes its rows "not
available"; an exception inside it makes them "failed", and the rest of the run goes on.
Each group runs in a child process of its own (``isolated``): ``benchmarks.bridge``
imports ``trio_asyncio``, after which ``asyncio.run`` builds trio-asyncio loops and every
asyncio peer timed in that process (PocketFlow, asyncio + Semaphore) runs about 8x slower.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

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
    at_most,
    measure_in_child,
    not_measured,
    series,
    us_per_item,
)

COSTS = "pocketflow"  # the variant of the run_pocketflow_costs group
RUN_ASYNC_LIMIT_MS = 0.5


def load(name: str) -> Callable[[int], Any] | str:
    """``benchmarks.bridge.<name>`` if it is there, else why not."""
    try:
        module = importlib.import_module("benchmarks.bridge")
    except ImportError as exc:
        return f"not available ({exc})"
    found = getattr(module, name, None)
    return found if callable(found) else f"not available (benchmarks.bridge has no {name})"


def plan(mode: Mode) -> list[Group]:
    """The call groups, and the costs group (it shows nothing when ``run_pocketflow_costs`` is absent).

    ``plan`` runs in the runner's process, so it does not import :mod:`benchmarks.bridge`
    (that imports ``trio_asyncio``, which slows every asyncio peer timed after it).
    """
    sizes = {"smoke": [(20, 1)], "quick": [(1000, 3)], "full": [(1000, 5), (10_000, 3)]}[mode]
    groups = [Group("bridge", n, None, (), repeats, warm_n=min(n, 100)) for n, repeats in sizes]
    runs = {"smoke": 5, "quick": 200, "full": 1000}[mode]
    groups.append(Group("bridge", runs, None, (), 1 if mode == "smoke" else 3, variant=COSTS, warm_n=5))
    return groups


def caller(group: Group) -> Callable[[int], dict[str, float]] | str:
    """How to call the group's function of :mod:`benchmarks.bridge` at a size, or why it cannot be."""
    if group.variant == COSTS:
        costs = load("run_pocketflow_costs")
        if isinstance(costs, str) or not inspect.iscoroutinefunction(costs):
            return costs
        return lambda n: asyncio.run(costs(n))
    run_bridge = load("run_bridge")
    if isinstance(run_bridge, str):
        return run_bridge
    return lambda n: trio.run(run_bridge, n)


def once(group: Group, system: str) -> tuple[float, float]:
    """Every bridge system at once (``system`` is ``"all"``): the memory child's run."""
    call = caller(group)
    if isinstance(call, str):
        raise RuntimeError(call)
    start, start_cpu = time.perf_counter(), time.process_time()
    call(group.n)
    return time.perf_counter() - start, time.process_time() - start_cpu


def steps(group: Group, memory: bool) -> int:
    return 1 + group.repeats + (1 if memory and group.variant != COSTS else 0)


def run(group: Group, context: Context) -> Result:
    call = caller(group)
    progress = context.progress
    if isinstance(call, str):
        progress.status(f"{group.label}: {call}")
        progress.advance(steps(group, context.memory))
        if group.variant == COSTS:  # optional: no rows, and its target says why
            return Result(group, {}, ours="")
        return Result(group, {}, status=call)
    figures: dict[str, Figure] = {}
    progress.status(f"{group.label}: warm-up")
    call(group.warm_size)
    progress.advance()
    for rep in range(group.repeats):
        progress.status(f"{group.label}: run {rep + 1}/{group.repeats}")
        gc.collect()
        for system, seconds in call(group.n).items():
            figures.setdefault(system, Figure()).runs.append(seconds * group.n)
        progress.advance()
    if context.memory and group.variant != COSTS:
        progress.status(f"{group.label}: peak memory (one child process runs every bridge system)")
        got = measure_in_child(group, "all")
        for figure in figures.values():
            figure.peak_mb = got["peak_mb"]
            figure.delta_mb = got["peak_mb"] - got["before_mb"]
            figure.note = "peak of one process running all bridge systems"
        progress.advance()
    if group.variant == COSTS:
        return Result(group, figures, ours="")
    ours = next((s for s in figures if "aio_as_trio" not in s), "")
    return Result(group, figures, ours=ours)


def _is_run_async_of_adapter(case: str) -> bool:
    low = case.lower()
    return "run_async" in low and "adapter" in low


def targets(results: Sequence[Result]) -> list[Target]:
    out: list[Target] = []
    calls = [r for r in results if r.group.variant != COSTS]
    if calls:
        last = max(calls, key=lambda r: r.group.n)
        base = next((s for s in last.figures if "aio_as_trio" in s), None)
        if last.status != "ok" or base is None or last.ours not in last.figures:
            why = last.status if last.status != "ok" else f"bridge systems {list(last.figures)}: no baseline"
            out.append(not_measured("bridge: time vs aio_as_trio", "<= 1.2x", why))
        else:
            ours, floor = last.figures[last.ours], last.figures[base]
            out.append(at_most(f"bridge: {last.ours} vs {base}", ours.median / floor.median, 1.2,
                               f"bridge, N={last.group.n:,}"))
    name = "adapters.pocketflow AsyncFlow.run_async, three nodes"
    limit = f"<= {RUN_ASYNC_LIMIT_MS:g} ms"
    costs = [r for r in results if r.group.variant == COSTS and r.status == "ok" and r.figures]
    if not costs:
        out.append(not_measured(name, limit, "benchmarks.bridge has no run_pocketflow_costs"))
        return out
    last = max(costs, key=lambda r: r.group.n)
    case = next((c for c in last.figures if _is_run_async_of_adapter(c)), None)
    if case is None:
        out.append(not_measured(name, limit, f"no case names run_async and adapter among {list(last.figures)}"))
    else:
        ms = last.figures[case].median / last.group.n * 1e3
        out.append(at_most(name, ms, RUN_ASYNC_LIMIT_MS, f"bridge pocketflow: {case}", unit=" ms"))
    return out


def tables(results: Sequence[Result]) -> list[ExtraTable]:
    """The adapters.pocketflow vs PocketFlow costs in ms per run, as ``run_pocketflow_costs`` names them."""
    costs = [r for r in results if r.group.variant == COSTS and r.status == "ok" and r.figures]
    if not costs:
        return []
    last = max(costs, key=lambda r: r.group.n)
    rows = [[case, f"{figure.median / last.group.n * 1e3:.3f}",
             f"{min(figure.runs) / last.group.n * 1e3:.3f}-{max(figure.runs) / last.group.n * 1e3:.3f}"]
            for case, figure in last.figures.items()]
    return [ExtraTable("bridge: adapters.pocketflow vs PocketFlow, ms per run", ("case", "ms per run", "min-max"),
                       rows, caption=f"benchmarks.bridge.run_pocketflow_costs({last.group.n:,}), "
                                     f"median of {last.group.repeats} calls")]


def panels(results: Sequence[Result]) -> list[Panel]:
    out: list[Panel] = []
    calls = series(results, us_per_item, pick=lambda g: g.variant != COSTS)
    if calls:
        out.append(Panel("bridge: µs per asyncio call", calls, x_label="N calls", y_label="µs per call (median)"))
    costs = [r for r in results if r.group.variant == COSTS and r.status == "ok" and r.figures]
    if costs:
        last = max(costs, key=lambda r: r.group.n)
        # run_pocketflow_costs names each figure "<case>: <system>": a group of bars per case,
        # a bar (and one colour) per system
        cost_series: dict[str, list[tuple[float | str, float]]] = {}
        for name, figure in last.figures.items():
            case, _, system = name.rpartition(": ")
            cost_series.setdefault(system or name, []).append((case or name, figure.median / last.group.n * 1e3))
        out.append(Panel("bridge: adapters.pocketflow vs PocketFlow, ms per run", cost_series, x_label="",
                         y_label="ms per run (median)"))
    return out


SCENARIO = Scenario(
    name="bridge",
    title="4 bridge",
    about="an asyncio node wrapped by adapters.aio vs trio-asyncio's own aio_as_trio (benchmarks/bridge.py)",
    plan=plan,
    once=once,
    run=run,
    steps=steps,
    targets=targets,
    tables=tables,
    panels=panels,
    labels={"trioflow-aio": "a PocketFlow AsyncBatchNode wrapped in adapters.aio.AsyncioNode",
            "aio_as_trio": "await trio_asyncio.aio_as_trio(exec_async)(i) in a plain loop (the floor)"},
    order=4,
    isolated=True,  # benchmarks.bridge imports trio_asyncio
)
