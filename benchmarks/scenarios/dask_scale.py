"""Scenario 10, ``dask-scale``: a lazy input of N items on a Dask cluster, cap 64.

A generator of N items (each a trivial task: the cluster's per-task cost is all
there is), on a ``LocalCluster`` of 2 single-threaded worker processes started once
per group, outside the timing.  Systems:

- ``trioflow``: a ``ParallelBatchNode`` with ``max_concurrency=64`` and ``executor=Dask(client)``;
- ``submit-loop``: a hand-written ``client.submit`` / ``distributed.as_completed``
  loop that keeps 64 futures in flight (``with_results=True``: results gathered in
  batches), pulls the generator only as futures finish, and puts the results in
  input order.

Each run samples how many futures the client holds (``len(client.futures)``, at
every pull and every 10 ms) and the process's resident memory (every 10 ms; the
client and the scheduler live in it): ``futures_max`` and ``rss_growth_mb`` (the peak over the run
minus the RSS before it).

Targets (the performance contract in README.md), at the largest N: futures alive
never above 64; the run's memory growth at the largest N at most 10 MB above its
growth at the smallest N (flat in N); throughput within 1.2x of the submit loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import trio

import trioflow
from trioflow.executors import Dask

from ..core import (
    Context,
    ExtraTable,
    Group,
    Mode,
    Panel,
    Result,
    Scenario,
    Target,
    at_most,
    cpu_ratio,
    figures_in,
    largest,
    ratio,
    run_timed,
    series,
    us_per_item,
)
from ._dask import local_cluster

SYSTEMS = ("trioflow", "submit-loop")
GROWTH_SLACK_MB = 10.0


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20
    except OSError:  # pragma: no cover - not Linux
        return 0.0


def double(item: int) -> int:
    return 2 * item


class Double(trioflow.ParallelBatchNode):
    def prep(self, shared: dict[str, Any]) -> Iterator[int]:
        return shared["items"]  # type: ignore[no-any-return]

    def exec(self, item: int) -> int:
        return 2 * item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["results"] = exec_res


class Samples:
    """The largest ``len(client.futures)`` and RSS seen."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.futures = 0
        self.before = rss_mb()
        self.peak = self.before

    def take(self) -> None:
        """Both samples (the RSS read is a file read: every 10 ms, not per item)."""
        self.futures = max(self.futures, len(self.client.futures))
        self.peak = max(self.peak, rss_mb())

    def items(self, n: int) -> Iterator[int]:
        """The lazy input, counting the futures at every pull."""
        client = self.client
        for item in range(n):
            self.futures = max(self.futures, len(client.futures))
            yield item


async def trioflow_run(client: Any, n: int, cap: int, samples: Samples) -> list[int]:
    async def sample() -> None:
        while True:
            samples.take()
            await trio.sleep(0.01)

    shared: dict[str, Any] = {"items": samples.items(n)}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        await Double(max_concurrency=cap, executor=Dask(client)).run(shared)
        nursery.cancel_scope.cancel()
    return shared["results"]  # type: ignore[no-any-return]


def submit_loop(client: Any, n: int, cap: int, samples: Samples) -> list[int]:
    from distributed import as_completed

    items = enumerate(samples.items(n))
    index: dict[str, int] = {}
    results: list[int] = [0] * n

    def submit() -> Any:
        i, item = next(items)
        future = client.submit(double, item, pure=False)
        index[future.key] = i
        return future

    pending = as_completed([submit() for _ in range(min(cap, n))], with_results=True)
    last = time.perf_counter()
    for future, value in pending:
        results[index.pop(future.key)] = value
        del future
        if time.perf_counter() - last > 0.01:
            samples.take()
            last = time.perf_counter()
        with contextlib.suppress(StopIteration):
            pending.add(submit())
    return results


def cluster(group: Group) -> contextlib.AbstractContextManager[Any]:
    """A LocalCluster of 2 single-threaded workers (worker processes, or threads for the smoke run) and its client."""
    return local_cluster(2, processes=bool(group.params.get("processes", True)))


def timed(group: Group, system: str, client: Any) -> tuple[float, float, Samples]:
    n, cap = group.n, group.cap
    assert cap is not None
    samples = Samples(client)
    if system == "trioflow":

        async def run() -> tuple[float, float, list[int]]:
            start, start_cpu = time.perf_counter(), time.process_time()
            return start, start_cpu, await trioflow_run(client, n, cap, samples)

        start, start_cpu, results = trio.run(run)
    elif system == "submit-loop":
        start, start_cpu = time.perf_counter(), time.process_time()
        results = submit_loop(client, n, cap, samples)
    else:
        raise ValueError(f"dask-scale: no system {system!r}")
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    assert results == [2 * i for i in range(n)], f"{system}: wrong results"
    return wall, cpu, samples


def once(group: Group, system: str) -> tuple[float, float]:
    """One run in a fresh process, its cluster started here (outside the timing)."""
    with cluster(group) as client:
        wall, cpu, _ = timed(group, system, client)
        return wall, cpu


def run(group: Group, context: Context) -> Result:
    """One cluster for the group, then :func:`run_timed`; each system's worst samples kept in its ``extra``."""
    worst: dict[str, dict[str, float]] = {}
    with cluster(group) as client:

        def sampled(g: Group, system: str) -> tuple[float, float]:
            wall, cpu, samples = timed(g, system, client)
            if g.n == group.n:  # not the warm-up
                mine = worst.setdefault(system, {"futures_max": 0, "rss_growth_mb": 0.0})
                mine["futures_max"] = max(mine["futures_max"], samples.futures)
                mine["rss_growth_mb"] = max(mine["rss_growth_mb"], samples.peak - samples.before)
            return wall, cpu

        result = run_timed(replace(SCENARIO, once=sampled), group, context)
    for system, extra in worst.items():
        result.figures[system].extra.update(extra)
    return result


def plan(mode: Mode) -> list[Group]:
    def group(n: int, repeats: int, **params: Any) -> Group:
        return Group("dask-scale", n, 64, SYSTEMS, repeats, params=params, warm_n=min(n, 500))

    if mode == "smoke":  # an in-process cluster: worker processes take seconds to start
        return [group(100, 1, processes=False)]
    if mode == "quick":
        return [group(1000, 2), group(5000, 2)]
    return [group(5000, 3), group(20_000, 3)]


def targets(results: Sequence[Result]) -> list[Target]:
    found = largest(results, "trioflow")
    if found is None:
        return []
    group, ours = found
    figures = figures_in(results, group)
    where = f"dask-scale, N={group.n:,}, cap {group.cap}"
    out = [at_most("dask-scale: futures alive (most seen)", ours.extra.get("futures_max", float("inf")),
                   float(group.cap or 0), where, unit="")]
    smallest = min((r for r in results if r.status == "ok" and "trioflow" in r.figures), key=lambda r: r.group.n)
    if smallest.group.n < group.n:
        grown = ours.extra["rss_growth_mb"] - smallest.figures["trioflow"].extra["rss_growth_mb"]
        out.append(at_most(f"dask-scale: memory growth at N={group.n:,} minus at N={smallest.group.n:,}", grown,
                           GROWTH_SLACK_MB, where, unit=" MB"))
    if "submit-loop" in figures:
        loop = figures["submit-loop"]
        out.append(at_most("dask-scale: time vs a hand-written submit/as_completed loop", ratio(ours, loop), 1.2,
                           where, cpu=cpu_ratio(ours, loop)))
    return out


def tables(results: Sequence[Result]) -> list[ExtraTable]:
    rows = [
        [f"{r.group.n:,}", system, f"{f.extra.get('futures_max', 0):g}", f"{f.extra.get('rss_growth_mb', 0):.1f}"]
        for r in results if r.status == "ok" for system, f in r.figures.items()
    ]
    if not rows:
        return []
    caption = "futures: at every pull of the lazy input and every 10 ms; RSS: every 10 ms"
    return [ExtraTable("dask-scale: what the client held", ("N", "system", "futures alive (most)", "RSS growth MB"),
                       rows, caption=caption)]


def panels(results: Sequence[Result]) -> list[Panel]:
    if not results:
        return []
    y: Callable[[Group, Any], float] = us_per_item
    return [Panel("dask-scale (cap 64): µs per item", series(results, y)),
            Panel("dask-scale: RSS growth of the run (MB)",
                  series(results, lambda g, f: f.extra.get("rss_growth_mb")), y_label="MB", log_y=False)]


SCENARIO = Scenario(
    name="dask-scale",
    title="10 dask-scale",
    about="a lazy input of N items on a Dask LocalCluster, cap 64: futures alive, memory, vs a submit loop",
    plan=plan,
    once=once,
    run=run,
    targets=targets,
    tables=tables,
    panels=panels,
    labels={
        "trioflow": "trioflow ParallelBatchNode, executor=Dask(client), cap 64",
        "submit-loop": "hand-written client.submit + distributed.as_completed loop, 64 in flight",
    },
    order=10,
)
