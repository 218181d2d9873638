"""BatchNode and ParallelBatchNode: ``exec`` once per item of ``prep``'s result."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

from . import _instrument
from ._errors import add_note
from ._node import Node, node_name
from ._parallel import OnError, _Pool, check_limits

__all__ = ["BatchNode", "ParallelBatchNode"]

T = TypeVar("T")


@asynccontextmanager
async def closing_async_gen(items: AsyncIterable[T]) -> AsyncIterator[AsyncIterable[T]]:
    """``aclosing`` for an async generator, so a batch that stops early (an error, a
    cancel) runs its ``finally`` now rather than at garbage collection (Trio then warns).
    Other async iterables (a channel the caller owns, say) are left open."""
    gen: Any = items
    if not inspect.isasyncgen(gen):
        yield items
        return
    async with aclosing(gen):
        yield items


def check_items(node: Node, items: Any, what: str = "prep") -> Iterable[Any] | AsyncIterable[Any]:
    """``prep``'s result as an iterable; None means no items (PocketFlow's habit)."""
    if items is None:
        return ()
    if isinstance(items, (Iterable, AsyncIterable)):
        return items
    raise TypeError(
        f"{node_name(node)}.{what} returned {type(items).__name__} {items!r:.60}, which is not "
        "iterable: a batch prep must return a list, a generator or an async iterator"
    )


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
        _instrument.batch_started(self, items)
        results: list[Any] = []
        try:
            if isinstance(items, AsyncIterable):
                async with closing_async_gen(items) as async_items:
                    async for item in async_items:
                        results.append(await self._exec_item(len(results), item))
            else:
                for item in items:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    results.append(await self._exec_item(len(results), item))
        except Exception as exc:
            add_note(exc, f"raised by item {len(results)} of {node_name(self)}")
            raise
        return results

    def _exec_item(self, index: int, item: Any) -> Awaitable[Any]:
        """One item under the retry policy, with item events; the same for both batch kinds.

        A plain function that returns the awaitable: with no instrument attached
        (the fast path) an item costs no coroutine beyond the retry core's.
        """
        attached = _instrument.current()
        if attached is None:
            return self._exec_with_policy(item, index)
        return self._exec_item_watched(attached, index, item)

    async def _exec_item_watched(self, attached: _instrument._Attached, index: int, item: Any) -> Any:
        attached.emit("item_started", self, index)
        try:
            result = await self._exec_with_policy(item, index)
        except BaseException as exc:
            attached.emit("item_finished", self, index, exc)
            raise
        attached.emit("item_finished", self, index, None)
        return result


@attrs.define(slots=False, eq=False, kw_only=True)
class ParallelBatchNode(BatchNode):
    """As :class:`BatchNode`, but items run concurrently in a bounded worker pool.

    Args:
        max_concurrency: the most items inside ``exec`` at once (None: no cap).
        limiter: a ``trio.CapacityLimiter`` shared with other nodes (one per API
            provider, say); an item holds a token while it runs.
        max_per_second: the most item starts per second.
        on_error: ``"raise"`` (the first item that fails after its retries and
            fallback cancels the others and the node raises
            :class:`BatchError`; ``post`` is not called) or ``"collect"`` (the
            exception object stands in the item's result slot).

    Results reach ``post`` in input order whatever the durations.  A generator
    or async iterator from ``prep`` is pulled only as workers free up.

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

    def __attrs_post_init__(self) -> None:
        check_parallel_options(self)

    async def _exec(self, prep_res: Any) -> list[Any]:
        items = check_items(self, prep_res)
        _instrument.batch_started(self, items)
        return await pool_for(self, self._exec_item, items).run_to_list()


def pool_for(
    node: Any, job: Callable[[int, Any], Awaitable[Any]], items: Iterable[Any] | AsyncIterable[Any]
) -> _Pool[Any, Any]:
    """The pool for a parallel node or flow, from its options (checked again here,
    since a plain subclass may set them after ``__init__``)."""
    check_parallel_options(node)
    return _Pool(
        job,
        items,
        max_concurrency=node.max_concurrency,
        limiter=node.limiter,
        max_per_second=node.max_per_second,
        on_error=node.on_error,
        name=node_name(node),
    )


def check_parallel_options(node: Any) -> None:
    """Raise a clear error, naming the node, for a bad cap, limiter, rate or on_error."""
    check_limits(node.max_concurrency, node.limiter, node.max_per_second, owner=node_name(node))
    if node.on_error not in ("raise", "collect"):
        raise ValueError(f"{node_name(node)}.on_error must be 'raise' or 'collect', not {node.on_error!r}")
