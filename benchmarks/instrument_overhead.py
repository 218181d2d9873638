"""Same-process A/B: what the instrument hooks cost a parallel batch when nothing is attached.

    python -m benchmarks.instrument_overhead [items] [rounds] [variant,variant,...]

Variants, run interleaved in a shuffled order each round, each a fresh
``trio.run`` of one ``ParallelBatchNode`` over ``range(items)`` with a cap of
64 and a trivial ``exec``, so the per-item engine cost is all there is:

- ``bare``: the node with the emit sites removed (``_exec`` straight to the
  pool, without ``batch_started`` or the runner's read of the attached
  instruments) - the engine without the layer;
- ``stock``: the shipped node, no instrument attached;
- ``empty``: the shipped node inside ``trioflow.instrumented()`` of nothing;
- ``noop``: one ``trioflow.Instrument()`` attached (every hook a no-op), for scale;
- ``tracer``: a ``trioflow.Tracer`` attached, for scale.

Prints the median and best seconds per variant and the ratios to ``bare``.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

import trioflow
from trioflow._batch import check_items
from trioflow._item import ItemRunner
from trioflow._parallel import _Pool


class Stock(trioflow.ParallelBatchNode):
    def prep(self, shared: Any) -> Any:
        return range(shared)

    async def exec(self, item: int) -> int:
        await trio.lowlevel.checkpoint()
        return item


class Bare(Stock):
    """The same node with the emit calls taken out of the per-batch and per-item paths."""

    async def _exec(self, prep_res: Any) -> list[Any]:
        runner = ItemRunner(self, self.exec)
        runner.attached = None  # as if the instruments were never read
        pool: _Pool[Any, Any] = _Pool(
            runner, check_items(self, prep_res), max_concurrency=self.max_concurrency, limiter=None,
            max_per_second=None, name="Bare",
        )
        return await pool.run_to_list()


def variant(node_cls: type[Stock], *instruments: Any, block: bool = False) -> Callable[[int], None]:
    def run(items: int) -> None:
        async def main() -> None:
            node = node_cls(max_concurrency=64)
            if block or instruments:
                with trioflow.instrumented(*instruments):
                    await node.run(items)
            else:
                await node.run(items)

        trio.run(main)

    return run


def main() -> None:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    variants: dict[str, Callable[[], Callable[[int], None]]] = {
        "bare": lambda: variant(Bare),
        "stock": lambda: variant(Stock),
        "empty": lambda: variant(Stock, block=True),
        "noop": lambda: variant(Stock, trioflow.Instrument()),
        "tracer": lambda: variant(Stock, trioflow.Tracer()),
    }
    if len(sys.argv) > 3:
        variants = {name: variants[name] for name in sys.argv[3].split(",")}
    times: dict[str, list[float]] = {name: [] for name in variants}
    variant(Stock)(1000)  # warm up imports and caches
    for _ in range(rounds):
        order = list(variants)
        random.shuffle(order)
        for name in order:
            run = variants[name]()
            start = time.perf_counter()
            run(items)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["bare"])
    print(f"{items} items, cap 64, {rounds} interleaved rounds (seconds: median / best; ratio of medians to bare)")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:7s} {median:7.3f} / {min(samples):7.3f}   x{median / base:.3f}")


if __name__ == "__main__":
    main()
