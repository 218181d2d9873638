"""trioflow: PocketFlow's graph of nodes on Trio's structured concurrency.

Nodes ``prep -> exec -> post``, flows route on the action ``post`` returns,
batch nodes run ``exec`` over many items and parallel batches do it in a
bounded, cancellation-safe worker pool that keeps input order.
"""

from __future__ import annotations

import functools
from typing import Any

import trio

from . import executors as executors
from ._batch import BatchNode as BatchNode
from ._batch import ParallelBatchNode as ParallelBatchNode
from ._errors import BatchError as BatchError
from ._flow import BatchFlow as BatchFlow
from ._flow import Flow as Flow
from ._flow import ParallelBatchFlow as ParallelBatchFlow
from ._instrument import Instrument as Instrument
from ._instrument import InstrumentWarning as InstrumentWarning
from ._instrument import instrumented as instrumented
from ._node import Node as Node
from ._parallel import as_completed as as_completed
from ._parallel import parallel_map as parallel_map
from ._throttle import Throttle as Throttle
from ._throttle import ThrottleStatistics as ThrottleStatistics
from .executors import WorkerDiedError as WorkerDiedError
from .tracing import Span as Span
from .tracing import Tracer as Tracer

__all__ = [
    "BatchError",
    "BatchFlow",
    "BatchNode",
    "Flow",
    "Instrument",
    "InstrumentWarning",
    "Node",
    "ParallelBatchFlow",
    "ParallelBatchNode",
    "Span",
    "Throttle",
    "ThrottleStatistics",
    "Tracer",
    "WorkerDiedError",
    "as_completed",
    "executors",
    "instrumented",
    "parallel_map",
    "run",
]


def run(flow_or_node: Node, shared: Any, *, store: Any = None, run_id: str | None = None) -> str | None:
    """Run a flow or node to completion from synchronous code (``trio.run``); return its action.

    With ``store`` (a path to a SQLite file, or a :class:`trioflow.store.SQLiteStore`)
    the run is durable: see :meth:`Node.run`.

    Example::

        shared = {"text": doc, "languages": ["fr", "de", "ja"]}
        trioflow.run(translation_flow, shared)
        trioflow.run(translation_flow, shared, store="runs.db", run_id="translate")  # resumable
    """
    if not isinstance(flow_or_node, Node):
        raise TypeError(f"trioflow.run needs a trioflow Node or Flow, not {flow_or_node!r}")
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        inside = False
    else:
        inside = True
    if not inside:  # trio.run outside the handler: the run's own errors get no unrelated __context__
        if store is None and run_id is None:
            return trio.run(flow_or_node.run, shared)
        return trio.run(functools.partial(flow_or_node.run, shared, store=store, run_id=run_id))
    name = type(flow_or_node).__name__
    raise RuntimeError(
        f"trioflow.run({name}, ...) was called inside a running Trio program; trioflow.run starts "
        f"one (trio.run) for synchronous code. Inside async code, await the flow instead: "
        f"`await flow.run(shared)`"
    )
