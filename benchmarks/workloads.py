"""The workloads: one coroutine function per (scenario, system), and the timer.

Every system runs the same per-item work, an ``async def`` of one item, so
the figures compare what each engine adds around it:

- ``trivial``: ``await sleep(0)`` and return the item (scenario 1);
- ``latency``: ``await sleep(latency)`` (scenario 2, a simulated API call);
- ``flow``: a three-node sub-flow (load, filter, save) per param dict, each
  node doing ``await sleep(0)`` (scenario 3, the image x filter grid).

The input is a generator wherever the system accepts one (aiometer takes a
``range``, a lazy sequence).  Every system collects the results in input
order, as ``ParallelBatchNode`` does.  :func:`time_once` starts the system's
own event loop (``trio.run`` or ``asyncio.run``) and returns the wall and CPU
seconds spent inside it on the run alone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiometer
import pocketflow
import trio

import trioflow

# The systems of each scenario, trioflow first.  A peer that has no cap
# (PocketFlow's asyncio.gather) runs uncapped whatever the cap of its row.
TRIVIAL_SYSTEMS = ("trioflow", "pocketflow", "asyncio-sem", "aiometer", "trio-nursery", "trio-lean", "trio-pool")
LATENCY_SYSTEMS = ("trioflow", "asyncio-sem", "aiometer", "trio-nursery", "trio-lean", "trio-pool")
POOLS = ("trio-lean", "trio-pool")  # worker pools: with no cap they would be the raw nursery, so they sit out
FLOW_SYSTEMS = ("trioflow", "pocketflow", "trio-nursery")

SYSTEM_LABELS = {
    "trioflow": "trioflow ParallelBatchNode",
    "pocketflow": "PocketFlow AsyncParallelBatchNode (gather, no cap)",
    "asyncio-sem": "asyncio gather + Semaphore",
    "aiometer": "aiometer.run_on_each on Trio",
    "trio-nursery": "raw Trio nursery, a task per item (+ CapacityLimiter if capped); "
    "in scenario 3 the three steps inline, no nodes",
    "trio-lean": "leanest hand-written Trio pool, the floor: workers share one iterator and await the sleep "
    "inline",
    "trio-pool": "hand-written Trio worker pool, one coroutine call per item (a second reference)",
    "ideal": "ideal: ceil(N/cap) x latency",
}

LATENCY = 0.05  # seconds per simulated call in scenario 2
FILTERS = 10  # filters per image in scenario 3


def items(n: int) -> Iterator[int]:
    """The input: a generator, so a system that can stream it does."""
    return (i for i in range(n))


# -- Trio side ---------------------------------------------------------------


def trio_work(delay: float) -> Callable[[int], Awaitable[int]]:
    async def work(item: int) -> int:
        await trio.sleep(delay)
        return item

    return work


async def trioflow_batch(n: int, cap: int | None, delay: float) -> list[Any]:
    class Work(trioflow.ParallelBatchNode):
        def prep(self, shared: dict[str, Any]) -> Iterator[int]:
            return items(n)

        async def exec(self, item: int) -> int:  # the body of trio_work: exec is the per-item work
            await trio.sleep(delay)
            return item

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["results"] = exec_res

    shared: dict[str, Any] = {}
    await Work(max_concurrency=cap).run(shared)
    return shared["results"]  # type: ignore[no-any-return]


async def trio_nursery(n: int, cap: int | None, delay: float) -> list[Any]:
    work = trio_work(delay)
    results: list[Any] = []
    limiter = trio.CapacityLimiter(cap) if cap is not None else None

    async def one(index: int, item: int) -> None:
        if limiter is None:
            results[index] = await work(item)
        else:
            async with limiter:
                results[index] = await work(item)

    async with trio.open_nursery() as nursery:
        for item in items(n):
            results.append(None)
            nursery.start_soon(one, len(results) - 1, item)
    return results


async def trio_lean(n: int, cap: int | None, delay: float) -> list[Any]:
    """The floor: ``cap`` workers share one iterator and await the sleep inline, no call per item.

    Nothing is added around the per-item ``await trio.sleep(delay)``: each worker
    takes the next item, reserves its slot in the result list (input order) and
    fills it when the sleep returns.
    """
    results: list[Any] = []
    source = items(n)

    async def worker() -> None:
        for item in source:
            index = len(results)
            results.append(None)
            await trio.sleep(delay)
            results[index] = item

    async with trio.open_nursery() as nursery:
        for _ in range(cap if cap is not None else n):
            nursery.start_soon(worker)
    return results


async def trio_pool(n: int, cap: int | None, delay: float) -> list[Any]:
    """A second reference: the pool of :func:`trio_lean`, but each item is a call of the work coroutine."""
    work = trio_work(delay)
    results: list[Any] = []
    source = items(n)

    async def worker() -> None:
        for item in source:
            index = len(results)
            results.append(None)
            results[index] = await work(item)

    async with trio.open_nursery() as nursery:
        for _ in range(cap if cap is not None else n):
            nursery.start_soon(worker)
    return results


async def aiometer_each(n: int, cap: int | None, delay: float) -> list[Any]:
    work = trio_work(delay)
    results: list[Any] = [None] * n

    async def one(item: int) -> None:
        results[item] = await work(item)

    await aiometer.run_on_each(one, range(n), max_at_once=cap)
    return results


# -- asyncio side ------------------------------------------------------------


def aio_work(delay: float) -> Callable[[int], Awaitable[int]]:
    async def work(item: int) -> int:
        await asyncio.sleep(delay)
        return item

    return work


async def asyncio_sem(n: int, cap: int | None, delay: float) -> list[Any]:
    work = aio_work(delay)
    if cap is None:
        return await asyncio.gather(*(work(i) for i in items(n)))
    semaphore = asyncio.Semaphore(cap)

    async def one(item: int) -> int:
        async with semaphore:
            return await work(item)

    return await asyncio.gather(*(one(i) for i in items(n)))


async def pocketflow_batch(n: int, cap: int | None, delay: float) -> list[Any]:
    class Work(pocketflow.AsyncParallelBatchNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[str, Any]) -> Iterator[int]:
            return items(n)

        async def exec_async(self, item: int) -> int:  # the body of aio_work
            await asyncio.sleep(delay)
            return item

        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["results"] = exec_res

    shared: dict[str, Any] = {}
    await Work().run_async(shared)
    return shared["results"]  # type: ignore[no-any-return]


# -- scenario 3: a parallel batch flow over a small sub-flow -------------------


def grid(n: int) -> list[dict[str, int]]:
    """``n`` param dicts: images x FILTERS (the seed's image x filter grid)."""
    return [{"image": i // FILTERS, "filter": i % FILTERS} for i in range(n)]


async def trioflow_flow(n: int, cap: int | None, delay: float) -> list[Any]:
    class Load(trioflow.Node):
        async def exec(self, prep_res: Any) -> int:
            await trio.sleep(delay)
            return self.params["image"]  # type: ignore[no-any-return]

        def post(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
            shared[("img", exec_res, self.params["filter"])] = exec_res

    class Filter(trioflow.Node):
        def prep(self, shared: dict[Any, Any]) -> Any:
            return shared[("img", self.params["image"], self.params["filter"])]

        async def exec(self, image: int) -> int:
            await trio.sleep(delay)
            return image * 100 + self.params["filter"]  # type: ignore[no-any-return]

        def post(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
            shared[("img", self.params["image"], self.params["filter"])] = exec_res

    class Save(trioflow.Node):
        def prep(self, shared: dict[Any, Any]) -> Any:
            return shared.pop(("img", self.params["image"], self.params["filter"]))

        async def exec(self, filtered: int) -> int:
            await trio.sleep(delay)
            return filtered

        def post(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
            shared["saved"].append(exec_res)

    class Grid(trioflow.ParallelBatchFlow):
        def prep(self, shared: dict[str, Any]) -> list[dict[str, int]]:
            return grid(n)

    load = Load()
    load >> Filter() >> Save()
    shared: dict[Any, Any] = {"saved": []}
    await Grid(start=load, max_concurrency=cap).run(shared)
    return shared["saved"]  # type: ignore[no-any-return]


async def pocketflow_flow(n: int, cap: int | None, delay: float) -> list[Any]:
    class Load(pocketflow.AsyncNode):  # type: ignore[misc]
        async def exec_async(self, prep_res: Any) -> int:
            await asyncio.sleep(delay)
            return self.params["image"]  # type: ignore[no-any-return]

        async def post_async(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
            shared[("img", exec_res, self.params["filter"])] = exec_res

    class Filter(pocketflow.AsyncNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[Any, Any]) -> Any:
            return shared[("img", self.params["image"], self.params["filter"])]

        async def exec_async(self, image: int) -> int:
            await asyncio.sleep(delay)
            return image * 100 + self.params["filter"]  # type: ignore[no-any-return]

        async def post_async(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
            shared[("img", self.params["image"], self.params["filter"])] = exec_res

    class Save(pocketflow.AsyncNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[Any, Any]) -> Any:
            return shared.pop(("img", self.params["image"], self.params["filter"]))

        async def exec_async(self, filtered: int) -> int:
            await asyncio.sleep(delay)
            return filtered

        async def post_async(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
            shared["saved"].append(exec_res)

    class Grid(pocketflow.AsyncParallelBatchFlow):  # type: ignore[misc]
        async def prep_async(self, shared: dict[str, Any]) -> list[dict[str, int]]:
            return grid(n)

    load = Load()
    load >> Filter() >> Save()
    shared: dict[Any, Any] = {"saved": []}
    await Grid(start=load).run_async(shared)
    return shared["saved"]  # type: ignore[no-any-return]


async def trio_flow_raw(n: int, cap: int | None, delay: float) -> list[Any]:
    """Scenario 3 with no engine: a task per param dict runs the three steps inline."""
    shared: dict[Any, Any] = {"saved": []}
    limiter = trio.CapacityLimiter(cap) if cap is not None else None

    async def steps(params: dict[str, int]) -> None:
        key = ("img", params["image"], params["filter"])
        await trio.sleep(delay)  # load
        shared[key] = params["image"]
        image = shared[key]
        await trio.sleep(delay)  # filter
        shared[key] = image * 100 + params["filter"]
        filtered = shared.pop(key)
        await trio.sleep(delay)  # save
        shared["saved"].append(filtered)

    async def one(params: dict[str, int]) -> None:
        if limiter is None:
            await steps(params)
        else:
            async with limiter:
                await steps(params)

    async with trio.open_nursery() as nursery:
        for params in grid(n):
            nursery.start_soon(one, params)
    return shared["saved"]  # type: ignore[no-any-return]


# -- timing ------------------------------------------------------------------

Runner = Callable[[int, "int | None", float], Awaitable[list[Any]]]

TRIO_RUNNERS: dict[tuple[str, str], Runner] = {
    ("trivial", "trioflow"): trioflow_batch,
    ("trivial", "aiometer"): aiometer_each,
    ("trivial", "trio-nursery"): trio_nursery,
    ("trivial", "trio-lean"): trio_lean,
    ("trivial", "trio-pool"): trio_pool,
    ("flow", "trioflow"): trioflow_flow,
    ("flow", "trio-nursery"): trio_flow_raw,
}
ASYNCIO_RUNNERS: dict[tuple[str, str], Runner] = {
    ("trivial", "pocketflow"): pocketflow_batch,
    ("trivial", "asyncio-sem"): asyncio_sem,
    ("flow", "pocketflow"): pocketflow_flow,
}


def time_once(scenario: str, system: str, n: int, cap: int | None) -> tuple[float, float]:
    """One run of ``system`` on ``n`` items, timed inside its event loop: (wall s, CPU s).

    The CPU time (``time.process_time``) is kept beside the wall time because
    a shared machine's load shows in the wall time only.

    Raises:
        AssertionError: the run did not return ``n`` results (a broken workload).
    """
    kind = "trivial" if scenario == "latency" else scenario
    delay = LATENCY if scenario == "latency" else 0.0
    key = (kind, system)
    elapsed = cpu = math.nan
    out: list[Any] = []

    async def timed(runner: Runner) -> None:
        nonlocal elapsed, cpu, out
        start, start_cpu = time.perf_counter(), time.process_time()
        out = await runner(n, cap, delay)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu

    if key in TRIO_RUNNERS:
        trio.run(timed, TRIO_RUNNERS[key])
    elif key in ASYNCIO_RUNNERS:
        asyncio.run(timed(ASYNCIO_RUNNERS[key]))
    else:
        raise KeyError(f"no workload for scenario {scenario!r}, system {system!r}")
    assert len(out) == n, f"{system} on {scenario} returned {len(out)} results for {n} items"
    return elapsed, cpu
