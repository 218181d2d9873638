"""The bridge scenario: a wrapped asyncio node's per-call cost vs trio-asyncio's own call.

``run_bridge(n)`` runs, in one trio-asyncio loop, ``n`` trivial asyncio
``exec_async`` calls two ways and returns the seconds per call of each:

* ``"trioflow-aio"``: a PocketFlow ``AsyncBatchNode`` of ``n`` items wrapped in
  :class:`adapters.aio.AsyncioNode` (so :class:`trioflow.BatchNode`), run once:
  each item goes through trioflow's batch loop, its retry core and the bridge
  (its ``prep_async``/``post_async`` crossings are spread over the ``n`` items);
* ``"aio_as_trio"``: the floor, ``await trio_asyncio.aio_as_trio(exec_async)(i)``
  in a plain loop.

The two alternate over a few rounds and the best round of each counts, so
both see the same process state.  Example::

    async with trio_asyncio.open_loop():  # or let run_bridge open one
        print(await run_bridge(10_000))
"""

from __future__ import annotations

import time
from typing import Any

import pocketflow
import trio_asyncio

from adapters.aio import AsyncioNode

__all__ = ["run_bridge"]


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


if __name__ == "__main__":  # pragma: no cover - python -m benchmarks.bridge
    import trio

    result = trio.run(run_bridge, 20_000)
    ratio = result["trioflow-aio"] / result["aio_as_trio"]
    print({k: f"{v * 1e6:.2f} us/call" for k, v in result.items()}, f"ratio {ratio:.3f}x")
