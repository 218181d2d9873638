"""Scenario 9, ``blocking``: N blocking calls of 50 ms (``time.sleep``, as a sync SDK blocks), cap 20.

Systems: trioflow's ``ParallelBatchNode`` with ``executor=Threads()`` and
``max_concurrency=20``; a hand-written ``concurrent.futures.ThreadPoolExecutor(20)``
(submit each item, read the results in order); a raw Trio nursery, a task per item
calling ``trio.to_thread.run_sync`` under a ``CapacityLimiter(20)``; and two computed
rows: the ideal, ceil(N / cap) x 50 ms, and inline (N x 50 ms: a plain ``def exec``
without an executor runs the calls one after another).

Target (the performance contract in README.md): 200 calls at cap 20 within 1.1x of
the 0.5 s ideal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import trio

import trioflow
from trioflow.executors import Threads

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

SYSTEMS = ("trioflow", "thread-pool", "trio-to-thread")


def blocking_call(item: int, delay: float) -> int:
    time.sleep(delay)  # a blocking SDK call
    return item


class Call(trioflow.ParallelBatchNode):
    def prep(self, shared: dict[str, Any]) -> range:
        return range(shared["n"])

    def exec(self, item: int) -> int:
        return blocking_call(item, self.params["delay"])

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["results"] = exec_res


async def trioflow_threads(n: int, cap: int, delay: float) -> list[int]:
    shared: dict[str, Any] = {"n": n}
    await Call(max_concurrency=cap, executor=Threads(max_workers=cap), params={"delay": delay}).run(shared)
    return shared["results"]  # type: ignore[no-any-return]


async def trio_to_thread(n: int, cap: int, delay: float) -> list[int]:
    limiter = trio.CapacityLimiter(cap)
    results: list[int] = [0] * n

    async def one(item: int) -> None:
        results[item] = await trio.to_thread.run_sync(blocking_call, item, delay, limiter=limiter)

    async with trio.open_nursery() as nursery:
        for item in range(n):
            nursery.start_soon(one, item)
    return results


def thread_pool(n: int, cap: int, delay: float) -> list[int]:
    with ThreadPoolExecutor(cap) as pool:
        futures = [pool.submit(blocking_call, item, delay) for item in range(n)]
        return [future.result() for future in futures]


def once(group: Group, system: str) -> tuple[float, float]:
    n, cap, delay = group.n, group.cap, float(group.params["delay"])
    assert cap is not None
    if system == "thread-pool":
        start, start_cpu = time.perf_counter(), time.process_time()
        results = thread_pool(n, cap, delay)
    else:
        runner = {"trioflow": trioflow_threads, "trio-to-thread": trio_to_thread}[system]

        async def timed() -> tuple[float, float, list[int]]:
            start, start_cpu = time.perf_counter(), time.process_time()
            return start, start_cpu, await runner(n, cap, delay)

        start, start_cpu, results = trio.run(timed)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    assert results == list(range(n)), f"{system}: wrong results"
    return wall, cpu


def ideal(group: Group) -> float:
    assert group.cap is not None
    return math.ceil(group.n / group.cap) * float(group.params["delay"])


def run(group: Group, context: Context) -> Result:
    """:func:`run_timed`, then the ideal and the inline time as computed rows."""
    result = run_timed(SCENARIO, group, context)
    result.figures["ideal"] = Figure(runs=[ideal(group)], note="computed")
    result.figures["inline"] = Figure(runs=[group.n * float(group.params["delay"])], note="computed")
    return result


def plan(mode: Mode) -> list[Group]:
    def group(n: int, cap: int, delay: float, repeats: int) -> Group:
        return Group("blocking", n, cap, SYSTEMS, repeats, params={"delay": delay}, warm_n=cap)

    if mode == "smoke":
        return [group(20, 10, 0.01, 1)]
    if mode == "quick":
        return [group(200, 20, 0.05, 3)]
    return [group(200, 20, 0.05, 5), group(1000, 100, 0.05, 3)]


def targets(results: Sequence[Result]) -> list[Target]:
    found = largest(results, "trioflow", lambda g: g.cap == 20)
    if found is None:
        return []
    group, ours = found
    limit = ideal(group)
    return [at_most(f"blocking: Threads wall time vs ideal {limit:g} s", ours.median / limit, 1.1,
                    f"blocking, N={group.n:,}, cap {group.cap}, {float(group.params['delay']) * 1000:g} ms calls")]


def panels(results: Sequence[Result]) -> list[Panel]:
    """Wall time ÷ ideal, a bar per system (the ideal is 1)."""
    return vs_ideal_panels(results, "blocking (50 ms sync calls): wall time ÷ ideal", ideal)


SCENARIO = Scenario(
    name="blocking",
    title="9 blocking",
    about="N blocking 50 ms calls, cap 20: Threads vs a ThreadPoolExecutor, trio.to_thread, the ideal",
    plan=plan,
    once=once,
    run=run,
    targets=targets,
    panels=panels,
    labels={
        "trioflow": "trioflow ParallelBatchNode, plain def exec on Threads",
        "thread-pool": "hand-written concurrent.futures.ThreadPoolExecutor(cap)",
        "trio-to-thread": "raw Trio nursery, trio.to_thread.run_sync under a CapacityLimiter(cap)",
        "ideal": "ceil(N / cap) x the call's time",
        "inline": "N x the call's time: a plain def exec without an executor",
    },
    order=9,
    sleep_bound=True,
)
