"""BatchNode and ParallelBatchNode: ``exec`` once per item of ``prep``'s result."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import trio

from . import _durable, _instrument
from ._errors import add_note
from ._item import Admission, Hold, ItemRunner
from ._node import Node, node_name
from ._parallel import OnError, _Pool, check_limits, input_note

__all__ = ["BatchNode", "ParallelBatchNode"]

T = TypeVar("T")


def check_items(node: Node, items: Any, what: str = "prep") -> Iterable[Any] | AsyncIterable[Any]:
    """``prep``'s result as an iterable of items; None means no items (PocketFlow's habit).

    A ``str``, ``bytes`` or a ``dict`` is refused, though Python iterates them:
    it is almost always one item returned where a list of items was meant.
    """
    if items is None:
        return ()
    if isinstance(items, (str, bytes, bytearray, Mapping)):
        hint = (
            "wrap a single item in a list ([item])"
            if not isinstance(items, Mapping)
            else "return a list of dicts ([{...}, ...]), or list(d.items()) to go over its pairs"
        )
        raise TypeError(
            f"{node_name(node)}.{what} returned {type(items).__name__} {items!r:.60}, which a batch "
            f"would iterate item by item ({'keys' if isinstance(items, Mapping) else 'characters'}): "
            f"a batch {what} must return a list, a generator or an async iterator of items; {hint}"
        )
    if isinstance(items, (Iterable, AsyncIterable)):
        return items
    raise TypeError(
        f"{node_name(node)}.{what} returned {type(items).__name__} {items!r:.60}, which is not "
        f"iterable: a batch {what} must return a list, a generator or an async iterator"
    )


async def run_sequential(node: Node, runner: ItemRunner, items: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
    """Run ``runner`` over ``items`` one after another (``BatchNode``, ``BatchFlow``).

    A failure propagates as it is, with a note naming the item; a generator
    input left half-pulled is closed before this returns.
    """
    _instrument.batch_started(node, items)
    results: list[Any] = []
    admission = runner.admission
    record = _appender(results)
    name = node_name(node)
    index = 0
    try:
        if isinstance(items, AsyncIterable):
            async_iterator = aiter(items)
            while True:
                try:
                    item = await anext(async_iterator)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    add_note(exc, input_note(name, index))
                    raise
                await _run_one(runner, index, item, admission, record, name)
                index += 1
        else:
            iterator = iter(items)
            while True:
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                except Exception as exc:
                    add_note(exc, input_note(name, index))
                    raise
                await trio.lowlevel.checkpoint_if_cancelled()
                await _run_one(runner, index, item, admission, record, name)
                index += 1
    finally:
        # A generator left half-pulled (a failure, a cancel) runs its ``finally`` now.
        if inspect.isasyncgen(items):
            await items.aclose()
        elif inspect.isgenerator(items):
            items.close()
    batch_finished(runner)
    return results


def _appender(results: list[Any]) -> Any:
    def record(index: Any, value: Any) -> None:
        results.append(value)

    return record


async def _run_one(
    runner: ItemRunner, index: int, item: Any, admission: Admission | None, record: Any, name: str
) -> None:
    hold = Hold()
    try:
        await runner.run(index, item, hold, record)
    except Exception as exc:
        add_note(exc, f"raised by {runner.noun} {index} of {name}")
        raise
    finally:
        if admission is not None:
            admission.exit(hold)


def runner_for(node: Any, call: Any, *, with_index: bool = False, recorder: Any = None) -> ItemRunner:
    """The item runner of one batch of ``node``: its throttle (sequential kinds; the pool adds
    the rest of the admission), its executor, the instruments attached now, and in a durable
    run its ``recorder`` (:func:`trioflow._durable.recorder_for`, awaited by the caller)."""
    throttle = getattr(node, "throttle", None)
    return ItemRunner(
        node,
        call,
        admission=Admission(throttle=throttle) if throttle is not None else None,
        recorder=recorder,
        with_index=with_index,
    )


def batch_finished(runner: ItemRunner) -> None:
    """The batch went through all its items (none failed it): tell its recorder, if any."""
    if runner.durable is not None:
        runner.durable.finished()


@attrs.define(slots=False, eq=False, kw_only=True)
class BatchNode(Node):
    """``prep`` returns items; ``exec(item)`` runs once per item, one after another.

    ``prep`` may return a list, a generator or an async iterator (pulled one
    item at a time).  ``post`` gets the results in input order.  Each item has
    the node's retry/timeout policy of its own.  A failure propagates as it is,
    with a note naming the item index.

    Example (PocketFlow's CSV-in-chunks)::

        class CSVStats(trioflow.BatchNode):
            def prep(self, shared):
                return pandas.read_csv(shared["path"], chunksize=1000)

            def exec(self, chunk):
                return chunk["amount"].sum()

            def post(self, shared, prep_res, exec_res):
                shared["total"] = sum(exec_res)
    """

    async def _exec(self, prep_res: Any) -> list[Any]:
        items = check_items(self, prep_res)
        recorder = await _durable.recorder_for(self) if _durable.current() is not None else None
        return await run_sequential(self, runner_for(self, self.exec, recorder=recorder), items)


@attrs.define(slots=False, eq=False, kw_only=True)
class ParallelBatchNode(BatchNode):
    """As :class:`BatchNode`, but items run concurrently in a bounded worker pool.

    Args:
        max_concurrency: the most attempts inside ``exec`` at once (None: no
            cap).  An item waiting to retry holds no place: another item's
            attempt takes it meanwhile, and the waiting item keeps its place in
            the result order.
        limiter: a ``trio.CapacityLimiter`` shared with other nodes (one per API
            provider, say); an attempt holds a token while it runs, not while
            its item waits to retry.
        max_per_second: the most attempt starts per second, evenly spaced.
        on_error: ``"raise"`` (the first item that fails after its retries and
            fallback cancels the others and the node raises
            :class:`BatchError`; ``post`` is not called) or ``"collect"`` (the
            exception object stands in the item's result slot).
        max_pending: the most items in progress (running, or waiting to retry);
            default 4 x ``max_concurrency`` (with no cap: no bound), so memory
            stays in proportion to the cap.
        throttle: a :class:`Throttle` shared with other nodes (a Node field).
        executor: where a plain ``def exec`` runs (a Node field; see
            :mod:`trioflow.executors`).

    Results reach ``post`` in input order whatever the durations.  A generator
    or async iterator from ``prep`` is pulled only as workers free up, and
    closed if the batch stops early.

    Example (PocketFlow's one text into many languages)::

        class Translate(trioflow.ParallelBatchNode):
            def prep(self, shared):
                return [(shared["text"], lang) for lang in shared["languages"]]

            async def exec(self, item):
                text, lang = item
                return await call_llm(f"Translate into {lang}: {text}")

            def post(self, shared, prep_res, exec_res):
                shared["translations"] = dict(zip(shared["languages"], exec_res))

        await trioflow.Flow(start=Translate(max_concurrency=8)).run(shared)
    """

    max_concurrency: int | None = None
    limiter: trio.CapacityLimiter | None = None
    max_per_second: float | None = None
    on_error: OnError = attrs.field(default="raise")
    max_pending: int | None = None

    def __attrs_post_init__(self) -> None:
        check_parallel_options(self)

    async def _exec(self, prep_res: Any) -> list[Any]:
        items = check_items(self, prep_res)
        recorder = await _durable.recorder_for(self) if _durable.current() is not None else None
        return await run_parallel(self, runner_for(self, self.exec, recorder=recorder), items)


async def run_parallel(node: Any, runner: ItemRunner, items: Iterable[Any] | AsyncIterable[Any]) -> list[Any]:
    """Run ``runner`` over ``items`` in the pool, with ``node``'s options (``ParallelBatchNode``,
    ``ParallelBatchFlow``); the options are checked again here, since a plain subclass may
    set them after ``__init__``."""
    check_parallel_options(node)
    _instrument.batch_started(node, items)
    pool: _Pool[Any, Any] = _Pool(
        runner,
        items,
        max_concurrency=node.max_concurrency,
        limiter=node.limiter,
        max_per_second=node.max_per_second,
        on_error=node.on_error,
        name=node_name(node),
        max_pending=node.max_pending,
    )
    results = await pool.run_to_list()
    batch_finished(runner)
    return results


def check_parallel_options(node: Any) -> None:
    """Raise a clear error, naming the node, for a bad cap, limiter, rate, max_pending or on_error."""
    check_limits(
        node.max_concurrency,
        node.limiter,
        node.max_per_second,
        owner=node_name(node),
        max_pending=node.max_pending,
        throttle=getattr(node, "throttle", None),
    )
    if node.on_error not in ("raise", "collect"):
        raise ValueError(f"{node_name(node)}.on_error must be 'raise' or 'collect', not {node.on_error!r}")
