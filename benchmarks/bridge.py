"""The bridge scenario: what crossing between Trio and asyncio costs, against the peers.

Two functions, each returning ``{system name: seconds per call}``:

``run_bridge(n)`` (Trio-flavored: ``trio.run(run_bridge, n)``) runs, in one
trio-asyncio loop, ``n`` trivial asyncio ``exec_async`` calls two ways:

* ``"trioflow-aio"``: a PocketFlow ``AsyncBatchNode`` of ``n`` items wrapped in
  :class:`adapters.aio.AsyncioNode` (so :class:`trioflow.BatchNode`), run once:
  each item goes through trioflow's batch loop, its retry core and the bridge
  (its ``prep_async``/``post_async`` crossings are spread over the ``n`` items);
* ``"aio_as_trio"``: the floor, ``await trio_asyncio.aio_as_trio(exec_async)(i)``
  in a plain loop.

``run_pocketflow_costs(n)`` (a plain function: it runs its own asyncio loops,
so call it outside any Trio run) measures what a PocketFlow program pays per
run on ``adapters.pocketflow`` against the real ``pocketflow`` package, four
figures, each for both systems (eight keys, ``"<figure>: <system>"``):

* ``"AsyncFlow.run_async, 3 nodes"``: an ``AsyncFlow`` of three trivial
  ``AsyncNode`` s awaited from a plain asyncio loop (what ``asyncio.run``
  builds), ``n`` runs per round (the target: at most 0.5 ms per run on the
  adapter);
* ``"AsyncFlow.run_async, 3 nodes, trio-asyncio loop"``: the same on the
  trio-asyncio loop that ``asyncio.run`` builds once ``trio_asyncio`` is
  imported (the adapter then runs inside that loop's Trio run);
* ``"Flow.run, 3 nodes"``: a sync ``Flow`` of three trivial ``Node`` s, ``n``
  runs per round;
* ``"AsyncParallelBatchNode, 100 items"``: one parallel batch of 100 trivial
  items, ``max(1, n // 20)`` runs per round.

Each round uses a fresh asyncio loop and discards one warm-up run, so the
adapter's one-time start of its Trio guest run on a new loop (about as much
as one ``trio.run``) is not counted: a server pays it once, not per request.

In both functions the systems alternate over a few rounds and the best round
of each counts, so they see the same process state.  Example::

    print(trio.run(run_bridge, 10_000))
    print(run_pocketflow_costs(1_000))

``python -m benchmarks.bridge`` prints both, side by side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pocketflow
import trio_asyncio

import adapters.pocketflow
from adapters.aio import AsyncioNode

__all__ = ["run_bridge", "run_pocketflow_costs"]


class _Echo(pocketflow.AsyncBatchNode):  # type: ignore[misc]  # pocketflow is untyped
    """``n`` items, each an ``exec_async`` that returns at once."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    async def prep_async(self, shared: Any) -> range:
        return range(self.n)

    async def exec_async(self, item: int) -> int:
        return item

    async def post_async(self, shared: Any, prep_res: Any, exec_res: list[int]) -> None:
        shared["count"] = len(exec_res)


async def _wrapped(n: int) -> float:
    node = AsyncioNode(_Echo(n))
    shared: dict[str, Any] = {}
    start = time.perf_counter()
    await node.run(shared)
    elapsed = time.perf_counter() - start
    assert shared["count"] == n
    return elapsed


async def _raw(n: int) -> float:
    call = trio_asyncio.aio_as_trio(_Echo(n).exec_async)
    start = time.perf_counter()
    for i in range(n):
        await call(i)
    return time.perf_counter() - start


async def run_bridge(n: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per call, best of ``rounds``: ``{"trioflow-aio": ..., "aio_as_trio": ...}``.

    Runs in the current trio-asyncio loop, or opens one for the measurement.
    """
    if trio_asyncio.current_loop.get() is None:
        async with trio_asyncio.open_loop():
            return await run_bridge(n, rounds)
    best = {"trioflow-aio": float("inf"), "aio_as_trio": float("inf")}
    for _ in range(rounds):
        best["aio_as_trio"] = min(best["aio_as_trio"], await _raw(n) / n)
        best["trioflow-aio"] = min(best["trioflow-aio"], await _wrapped(n) / n)
    return best


# -- adapters.pocketflow against pocketflow -------------------------------------------

SYSTEMS = {"pocketflow": pocketflow, "adapters.pocketflow": adapters.pocketflow}
RUN_ASYNC = "AsyncFlow.run_async, 3 nodes"
RUN_ASYNC_TRIO_ASYNCIO = "AsyncFlow.run_async, 3 nodes, trio-asyncio loop"
RUN_SYNC = "Flow.run, 3 nodes"
PARALLEL = "AsyncParallelBatchNode, 100 items"


def _three_async(mod: Any) -> Any:
    class Step(mod.AsyncNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[str, Any]) -> int:
            return int(shared.get("x", 0))

        async def exec_async(self, x: int) -> int:
            return x + 1

        async def post_async(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> None:
            shared["x"] = exec_res

    first = Step()
    first >> Step() >> Step()
    return mod.AsyncFlow(start=first)


def _three_sync(mod: Any) -> Any:
    class Step(mod.Node):  # type: ignore[misc]
        def prep(self, shared: dict[str, Any]) -> int:
            return int(shared.get("x", 0))

        def exec(self, x: int) -> int:
            return x + 1

        def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> None:
            shared["x"] = exec_res

    first = Step()
    first >> Step() >> Step()
    return mod.Flow(start=first)


def _parallel(mod: Any) -> Any:
    class Items(mod.AsyncParallelBatchNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[str, Any]) -> list[int]:
            return list(range(100))

        async def exec_async(self, item: int) -> int:
            return item

        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["x"] = len(exec_res)

    return Items()


def _plain_loop() -> asyncio.AbstractEventLoop:
    # Not asyncio.new_event_loop: once trio_asyncio is imported, it builds trio-asyncio loops.
    return asyncio.DefaultEventLoopPolicy().new_event_loop()


def _trio_asyncio_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()  # a trio-asyncio loop, once trio_asyncio is imported (it is, above)
    on_trio = isinstance(loop, trio_asyncio.BaseTrioEventLoop)
    assert on_trio, loop
    return loop


def _per_run_async(
    flow: Any, runs: int, expect: int, loop_factory: Callable[[], asyncio.AbstractEventLoop] = _plain_loop
) -> float:
    """Seconds per ``await flow.run_async(shared)`` on a fresh asyncio loop, after one warm-up run."""

    async def main() -> float:
        await flow.run_async({})
        start = time.perf_counter()
        for _ in range(runs):
            shared: dict[str, Any] = {}
            await flow.run_async(shared)
        elapsed = time.perf_counter() - start
        assert shared["x"] == expect
        return elapsed / runs

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def _per_run_async_trio_asyncio(flow: Any, runs: int, expect: int) -> float:
    return _per_run_async(flow, runs, expect, _trio_asyncio_loop)


def _per_run_sync(flow: Any, runs: int, expect: int) -> float:
    flow.run({})
    start = time.perf_counter()
    for _ in range(runs):
        shared: dict[str, Any] = {}
        flow.run(shared)
    elapsed = time.perf_counter() - start
    assert shared["x"] == expect
    return elapsed / runs


def run_pocketflow_costs(n: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per run, best of ``rounds``, as ``{"<figure>: <system>": seconds}`` (see the module docstring)."""
    measures: dict[str, tuple[Callable[[Any], Any], Callable[[Any, int, int], float], int, int]] = {
        RUN_ASYNC: (_three_async, _per_run_async, n, 3),
        RUN_ASYNC_TRIO_ASYNCIO: (_three_async, _per_run_async_trio_asyncio, n, 3),
        RUN_SYNC: (_three_sync, _per_run_sync, n, 3),
        PARALLEL: (_parallel, _per_run_async, max(1, n // 20), 100),
    }
    best = {f"{figure}: {system}": float("inf") for figure in measures for system in SYSTEMS}
    for _ in range(rounds):
        for figure, (build, measure, runs, expect) in measures.items():
            for system, mod in SYSTEMS.items():
                key = f"{figure}: {system}"
                best[key] = min(best[key], measure(build(mod), runs, expect))
    return best


def _main() -> None:  # pragma: no cover - python -m benchmarks.bridge
    import trio

    result = trio.run(run_bridge, 20_000)
    ratio = result["trioflow-aio"] / result["aio_as_trio"]
    print("asyncio node bridged into Trio, per call:")
    print({k: f"{v * 1e6:.2f} us/call" for k, v in result.items()}, f"ratio {ratio:.3f}x (target: at most 1.2x)")
    costs = run_pocketflow_costs(1_000)
    print("\nPocketFlow programs, per run (best of 5 rounds):")
    print(f"{'':48} {'pocketflow':>12} {'adapters.pocketflow':>20} {'ratio':>8}")
    for figure in (RUN_ASYNC, RUN_ASYNC_TRIO_ASYNCIO, RUN_SYNC, PARALLEL):
        theirs, ours = costs[f"{figure}: pocketflow"], costs[f"{figure}: adapters.pocketflow"]
        print(f"{figure:48} {theirs * 1e3:9.4f} ms {ours * 1e3:17.4f} ms {ours / theirs:7.1f}x")
    verdict = "met" if costs[f"{RUN_ASYNC}: adapters.pocketflow"] <= 0.5e-3 else "MISSED"
    print(f"\nadapters.pocketflow {RUN_ASYNC}: at most 0.5 ms per run: {verdict}")


if __name__ == "__main__":  # pragma: no cover
    _main()
