"""The worker pool under every parallel path of trioflow.

``parallel_map`` and ``as_completed`` are the public faces; ``ParallelBatchNode``
and ``ParallelBatchFlow`` run on the same :class:`_Pool`.

The pool does the *pull* stage and owns the result slots; everything else an
item goes through (done before?, admit, run, record) is its
:class:`~._item.ItemRunner`'s, decided once per batch (see :mod:`._item`).

How it pulls: with a cap of N, worker tasks pull the next item only when they
are free, so a generator or an async iterator is consumed lazily and memory
grows with N, not with the input.  Workers start as items arrive (each worker
starts the next one when it pulls its first item), so 3 items under a cap of a
million start 4 tasks, not a million.  When an item may be retried (the node
has ``max_retries > 1`` or a Throttle), ``max_concurrency`` bounds *attempts*
in flight: an item waiting to retry gives its place back, and up to
``max_pending`` (default 4 x the cap) workers keep items in progress.

With no cap, one task is started per item, as a raw nursery would; the
spawning loop yields to Trio every :data:`SPAWN_CHECKPOINT` items, so a cancel
reaches it even on an endless plain generator.  There is no bound on the items
in flight then (that is what "no cap" means) unless ``max_pending`` is given.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from types import CoroutineType
from typing import Any, Generic, Literal, NoReturn, TypeVar, overload

import trio

from . import _instrument
from ._errors import BatchError, add_note
from ._item import Admission, Hold, ItemRunner, Rate

__all__ = ["as_completed", "parallel_map"]

T = TypeVar("T")
R = TypeVar("R")

OnError = Literal["raise", "collect"]

_PENDING: Any = object()  # marks a result slot whose item has not finished

#: With no cap, the spawning loop yields to Trio after this many items.
SPAWN_CHECKPOINT = 128


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_limits(
    max_concurrency: int | None,
    limiter: trio.CapacityLimiter | None,
    max_per_second: float | None,
    owner: str = "parallel_map",
    *,
    max_pending: int | None = None,
    throttle: Any = None,
) -> None:
    """Raise a clear error, naming ``owner``, for a bad cap, limiter, rate, pending bound or throttle."""
    if max_concurrency is not None and (not _is_int(max_concurrency) or max_concurrency < 1):
        raise ValueError(f"{owner}: max_concurrency must be an int >= 1 or None, not {max_concurrency!r}")
    if limiter is not None and not isinstance(limiter, trio.CapacityLimiter):
        raise TypeError(f"{owner}: limiter must be a trio.CapacityLimiter or None, not {limiter!r}")
    if max_per_second is not None and (
        isinstance(max_per_second, bool)
        or not isinstance(max_per_second, (int, float))
        or not max_per_second > 0
        or math.isinf(max_per_second)
    ):
        raise ValueError(f"{owner}: max_per_second must be a finite number > 0 or None, not {max_per_second!r}")
    if max_pending is not None:
        if not _is_int(max_pending) or max_pending < 1:
            raise ValueError(f"{owner}: max_pending must be an int >= 1 or None, not {max_pending!r}")
        if max_concurrency is not None and max_pending < max_concurrency:
            raise ValueError(
                f"{owner}: max_pending ({max_pending}) counts the items in flight and those waiting to "
                f"retry, so it cannot be below max_concurrency ({max_concurrency})"
            )
    if throttle is not None and not (callable(getattr(throttle, "acquire", None)) and hasattr(throttle, "release")):
        raise TypeError(f"{owner}: throttle must be a trioflow.Throttle or None, not {throttle!r}")


def executor_cap(node: Any, max_pending: int | None) -> int | None:
    """The cap of a batch that sets none, from the node's executor: a pool of threads or
    processes runs at most its size at once, a Dask cluster gets twice its threads (so the
    input is pulled, and futures exist, only as workers free up), inline has none."""
    default = getattr(getattr(node, "executor", None), "default_max_concurrency", None)
    cap = default() if default is not None else None
    if cap is not None and max_pending is not None:
        cap = min(cap, max_pending)
    return cap


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def reraise_bare(lone: BaseException) -> NoReturn:
    """Raise ``lone`` as it is, keeping the ``__cause__``/``__context__`` its raiser gave it."""
    cause, context, suppress = lone.__cause__, lone.__context__, lone.__suppress_context__
    try:
        raise lone
    finally:
        lone.__cause__, lone.__context__, lone.__suppress_context__ = cause, context, suppress


@contextmanager
def bare_base_exception() -> Iterator[None]:
    """Let a lone ``BaseException`` out of the pool's nursery bare: never wrapped.

    The pool catches every ``Exception`` of its items itself (into a
    ``BatchError`` or a result slot), so what a worker can raise through the
    nursery is ``trio.Cancelled`` or another ``BaseException``, which Trio wraps
    in a ``BaseExceptionGroup``.  A single one (beside the ``Cancelled`` of its
    siblings, which it makes moot) is re-raised as it is, with its cause and
    context; a group of ``Cancelled`` alone (an outer cancel) becomes one bare
    ``Cancelled``, so ``except trio.Cancelled`` sees it.  Several others at
    once stay a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        cancelled, rest = group.split(trio.Cancelled)
        if rest is None:
            assert cancelled is not None
            reraise_bare(_first_leaf(cancelled))
        if len(rest.exceptions) == 1:
            (lone,) = rest.exceptions
            if not isinstance(lone, (Exception, BaseExceptionGroup)):
                reraise_bare(lone)
        raise


def _is_plain_generator(it: Any) -> bool:
    return inspect.isgenerator(it)


class _Pool(Generic[T, R]):
    """One parallel run of an :class:`ItemRunner` (or of ``job(index, item)``) over ``items``.

    Results go to ``self.results`` (a list in input order) or, when ``send`` is
    given, to a channel in completion order.  Failures are kept in
    ``self.failures``; with ``on_error="raise"`` the first one cancels the
    items in flight and stops the pulling of new ones.
    """

    def __init__(
        self,
        job: ItemRunner | Callable[[int, T], Awaitable[R]],
        items: Iterable[T] | AsyncIterable[T],
        *,
        max_concurrency: int | None,
        limiter: trio.CapacityLimiter | None,
        max_per_second: float | None,
        on_error: OnError = "raise",
        send: trio.MemorySendChannel[tuple[int, R | Exception]] | None = None,
        name: str = "parallel_map",
        throttle: Any = None,
        max_pending: int | None = None,
    ) -> None:
        runner = job if isinstance(job, ItemRunner) else ItemRunner(None, job, with_index=True)  # type: ignore[arg-type]
        node = runner.node
        if max_concurrency is None and not runner.with_index:
            max_concurrency = executor_cap(node, max_pending)
        if throttle is None:
            throttle = getattr(node, "throttle", None)
        # An item gives its place back between attempts when it may have more than one.
        retrying = node is not None and (node.max_retries > 1 or throttle is not None) and not runner.with_index
        gated = max_concurrency is not None and retrying
        if max_pending is None and gated:
            max_pending = 4 * max_concurrency  # type: ignore[operator]
        self.admission = Admission(
            slots=trio.CapacityLimiter(max_concurrency) if gated else None,  # type: ignore[arg-type]
            limiter=limiter,
            rate=Rate(max_per_second) if max_per_second is not None else None,
            throttle=throttle,
        )
        if self.admission:
            runner.admission = self.admission
            runner.fast = runner.fast_async = False
        self.runner = runner
        self.max_concurrency = max_concurrency
        # cap: one worker per place; gated: places are slots, workers keep items in progress
        self.max_workers = max_pending if gated else max_concurrency
        self.max_pending = max_pending
        self.on_error = on_error
        self.send = send
        self.name = name
        self.results: list[Any] | None = [] if send is None else None
        self.failures: list[Exception] = []
        self.undelivered: dict[int, Any] = {}  # finished, not yet handed to the consumer (as_completed)
        self.count = 0
        self.stopped = False
        self.workers = 0
        self._nursery: trio.Nursery | None = None
        self._sync_it: Iterator[T] | None = None
        self._async_it: AsyncIterator[T] | None = None
        self._pull_lock: trio.Lock | None = None
        if isinstance(items, AsyncIterable):
            self._async_it = aiter(items)
            self._pull_lock = trio.Lock()
        elif isinstance(items, Iterable):
            self._sync_it = iter(items)
        else:
            raise TypeError(f"{name}: items must be an iterable or an async iterable, not {type(items).__name__}")

    # -- pulling -------------------------------------------------------------

    def _fail(self, exc: Exception, note: str) -> None:
        add_note(exc, note)
        self.failures.append(exc)
        self.stopped = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _input_failed(self, exc: Exception) -> None:
        """The input itself raised while pulled: the batch stops, whatever ``on_error`` says."""
        index = self.count if self.results is None else len(self.results)
        self._fail(exc, input_note(self.name, index))

    def _next_index(self) -> int:
        index = self.count
        self.count += 1
        if self.results is not None:
            self.results.append(_PENDING)
        return index

    def _pull_sync(self) -> tuple[int, T] | None:
        """The next (index, item) of a plain iterable, or None when it is done or the pool stopped.

        A plain function, not a coroutine: pulling from a list or a generator never blocks.
        """
        if self.stopped:
            return None
        try:
            item = next(self._sync_it)  # type: ignore[arg-type]
        except StopIteration:
            self.stopped = True
            return None
        except Exception as exc:
            self._input_failed(exc)
            return None
        return self._next_index(), item

    async def _pull_async(self) -> tuple[int, T] | None:
        """The next (index, item) of an async iterable, one puller at a time."""
        assert self._async_it is not None and self._pull_lock is not None
        async with self._pull_lock:
            if self.stopped:
                return None
            try:
                item = await anext(self._async_it)
            except StopAsyncIteration:
                self.stopped = True
                return None
            except Exception as exc:
                self._input_failed(exc)
                return None
            return self._next_index(), item

    async def _pull(self) -> tuple[int, T] | None:
        if self._sync_it is not None:
            return self._pull_sync()
        return await self._pull_async()

    async def _close_input(self) -> None:
        """Close a generator input left half-pulled (a failure, a cancel, an early exit) now,
        as ``aclosing``/``closing`` would, so its ``finally`` runs now and not at garbage
        collection.  Other iterables (a channel or an iterator the caller owns) stay open."""
        if inspect.isasyncgen(self._async_it):
            await self._async_it.aclose()
        elif _is_plain_generator(self._sync_it):
            self._sync_it.close()  # type: ignore[union-attr]

    # -- running one item (the general path) ------------------------------------

    def _failed(self, index: int, exc: Exception) -> bool:
        """Note item ``index``'s failure; True if its exception stands in its result slot."""
        note = f"raised by {self.runner.noun} {index} of {self.name}"
        if self.on_error == "raise":
            self._fail(exc, note)
            return False
        add_note(exc, note)
        return True

    def _record(self, index: int, value: Any) -> None:
        """The record stage's slot: the result list, or the hand-over to the consumer."""
        if self.results is not None:
            self.results[index] = value
        else:
            self.undelivered[index] = value

    async def _one(self, index: int, item: T, hold: Hold) -> None:
        try:
            await self.runner.run(index, item, hold, self._record)
        except Exception as exc:
            if not self._failed(index, exc):
                return
            self._record(index, exc)
        if self.send is not None:
            # A token bounds work in flight, not results waiting to be read: give it back first.
            self.admission.exit(hold)
            try:
                await self.send.send((index, self.undelivered[index]))
            except trio.BrokenResourceError:  # the consumer left early: stop quietly
                self.stopped = True
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
            else:
                del self.undelivered[index]

    def _start_worker(self) -> None:
        """Start one more worker if the cap allows (a worker calls this when it pulls its first item)."""
        if self.max_workers is not None and self.workers < self.max_workers:
            self.workers += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._worker_fn())

    def _worker_fn(self) -> Callable[[], Awaitable[None]]:
        if self.runner.fast and self._sync_it is not None and self.results is not None:
            return self._fast_async_worker if self.runner.fast_async else self._fast_worker
        return self._worker

    async def _worker(self) -> None:
        """Pull and run items one after another; with slots, take a place before pulling."""
        slots = self.admission.slots
        # With nothing to take per attempt, no Hold is ever filled: one empty Hold serves every item.
        empty = None if self.admission else Hold()
        first = True
        while True:
            hold = empty or Hold()
            try:
                if slots is not None:
                    await slots.acquire_on_behalf_of(hold)
                    hold.slot = True
                got = self._pull_sync() if self._sync_it is not None else await self._pull_async()
                if got is None:
                    return
                if first:
                    first = False
                    self._start_worker()
                await self._one(got[0], got[1], hold)
            finally:
                self.admission.exit(hold)

    async def _fast_async_worker(self) -> None:
        """The hot path (plain input, results in a list, an ``async def`` call that needs
        nothing else): an item costs one ``next``, one slot and one await of the call."""
        call = self.runner.call
        with_index = self.runner.with_index
        results = self.results
        assert results is not None and self._sync_it is not None
        first = True
        if self.stopped:
            return
        try:
            for item in self._sync_it:
                index = len(results)
                results.append(_PENDING)
                if first:
                    first = False
                    self._start_worker()
                try:
                    results[index] = await (call(index, item) if with_index else call(item))
                except Exception as exc:
                    if not self._failed(index, exc):
                        return
                    results[index] = exc
                if self.stopped:  # checked before the next pull
                    return
        except Exception as exc:  # only the input raises out here: the call's errors are caught above
            self._input_failed(exc)
            return
        self.stopped = True

    async def _fast_worker(self) -> None:
        """As :meth:`_fast_async_worker` for a call that may be plain ``def``: a plain result
        is recorded first, then the task yields (so a batch of plain calls shares the run)."""
        call = self.runner.call
        results = self.results
        assert results is not None and self._sync_it is not None
        first = True
        if self.stopped:
            return
        try:
            for item in self._sync_it:
                index = len(results)
                results.append(_PENDING)
                if first:
                    first = False
                    self._start_worker()
                plain = False
                try:
                    value = call(item)
                    if type(value) is CoroutineType or inspect.isawaitable(value):
                        value = await value
                    else:
                        plain = True
                    results[index] = value
                except Exception as exc:
                    if not self._failed(index, exc):
                        return
                    results[index] = exc
                if plain:
                    await trio.lowlevel.checkpoint()
                if self.stopped:  # checked before the next pull
                    return
        except Exception as exc:  # only the input raises out here
            self._input_failed(exc)
            return
        self.stopped = True

    # -- no cap: a task per item --------------------------------------------------

    async def _fast_one(self, index: int, item: T) -> None:
        assert self.results is not None
        try:
            runner = self.runner
            value = runner.call(index, item) if runner.with_index else runner.call(item)
            if type(value) is CoroutineType or inspect.isawaitable(value):
                self.results[index] = await value
                return
            self.results[index] = value
        except Exception as exc:
            if self._failed(index, exc):
                self.results[index] = exc
            return
        await trio.lowlevel.checkpoint()

    async def _one_task(self, index: int, item: T, hold: Hold, pending: trio.CapacityLimiter | None) -> None:
        try:
            await self._one(index, item, hold)
        finally:
            self.admission.exit(hold)
            if pending is not None:
                pending.release_on_behalf_of(hold)

    async def _spawn_all(self, nursery: trio.Nursery) -> None:
        """No cap: one task per item.  With a limiter, a token is taken before the pull (so the
        input is pulled only as tokens free up) and handed to the item's task."""
        fast = self.runner.fast and self.results is not None
        limiter = self.admission.limiter
        pending = trio.CapacityLimiter(self.max_pending) if self.max_pending is not None else None
        start_soon = nursery.start_soon
        spawned = 0
        if fast and pending is None:  # the hot path: nothing to hold per item
            while (got := self._pull_sync() if self._sync_it is not None else await self._pull_async()) is not None:
                start_soon(self._fast_one, got[0], got[1])
                spawned += 1
                if spawned % SPAWN_CHECKPOINT == 0:
                    await trio.lowlevel.checkpoint()
            return
        while True:
            hold = Hold()
            got = None
            held_pending = False
            try:
                if pending is not None:
                    await pending.acquire_on_behalf_of(hold)
                    held_pending = True
                if limiter is not None:
                    await limiter.acquire_on_behalf_of(hold)
                    hold.token = True
                got = self._pull_sync() if self._sync_it is not None else await self._pull_async()
            finally:
                if got is None:  # the input is done, or the pull was cut short: give the tokens back
                    self.admission.exit(hold)
                    if held_pending:
                        pending.release_on_behalf_of(hold)  # type: ignore[union-attr]
            if got is None:
                return
            if fast:
                start_soon(self._fast_one, got[0], got[1])
            else:
                start_soon(self._one_task, got[0], got[1], hold, pending)
            spawned += 1
            if spawned % SPAWN_CHECKPOINT == 0:
                await trio.lowlevel.checkpoint()

    # -- the run ------------------------------------------------------------------

    async def run(self) -> None:
        """Run every item; failures are left in ``self.failures``."""
        try:
            with bare_base_exception():
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self.max_concurrency is None:
                        await self._spawn_all(nursery)
                    else:
                        self._start_worker()
        finally:
            self._nursery = None
            await self._close_input()

    def error(self) -> BatchError:
        """The ``BatchError`` for the failures so far, with what did complete."""
        completed: dict[int, Any] = self.undelivered
        if self.results is not None:
            completed = {i: r for i, r in enumerate(self.results) if r is not _PENDING}
        n = len(self.failures)
        return BatchError(f"{n} item{'s' if n != 1 else ''} of {self.name} failed", self.failures, completed)

    async def run_to_list(self) -> list[R | Exception]:
        """Run every item and return the results in input order, or raise BatchError."""
        await self.run()
        if self.failures:
            raise self.error()
        assert self.results is not None
        return self.results


def input_note(name: str, index: int) -> str:
    """The note on an exception that a batch's input raised while being pulled (one wording everywhere)."""
    return f"raised while {name} pulled item {index} from its input"


# -- parallel_map and as_completed --------------------------------------------------


def _mapped(fn: Callable[[T], Any], items: Any, name: str | None, throttle: Any, executor: Any, owner: str) -> Any:
    """A node that stands for ``fn`` in a ``parallel_map``/``as_completed`` run: its policy
    (one attempt; throttled attempts tried again), its executor, its name in events."""
    from ._node import mapped_node

    if not callable(fn):
        raise TypeError(f"{owner}: fn must be a function of one item (async def or plain def), not {fn!r}")
    if not isinstance(items, (Iterable, AsyncIterable)):
        raise TypeError(f"{owner}: items must be an iterable or an async iterable, not {type(items).__name__}")
    label: str = name or getattr(fn, "__name__", None) or owner
    return mapped_node(fn, label, throttle=throttle, executor=executor)


@asynccontextmanager
async def _watched(node: Any, items: Any) -> AsyncIterator[None]:
    """The node events around a ``parallel_map``/``as_completed`` run, when an instrument is attached."""
    attached = _instrument.current()
    if attached is None:
        yield
        return
    attached.emit("node_started", node)
    _instrument.batch_started(node, items)
    try:
        yield
    except BaseException as exc:
        attached.emit("node_finished", node, None, exc)
        raise
    attached.emit("node_finished", node, None, None)


@overload
async def parallel_map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
    throttle: Any = None,
    executor: Any = None,
    max_pending: int | None = None,
    name: str | None = None,
) -> list[R]: ...


@overload
async def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
    throttle: Any = None,
    executor: Any = None,
    max_pending: int | None = None,
    name: str | None = None,
) -> list[R]: ...


async def parallel_map(
    fn: Callable[[T], Any],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
    throttle: Any = None,
    executor: Any = None,
    max_pending: int | None = None,
    name: str | None = None,
) -> list[Any]:
    """Run ``fn(item)`` for every item concurrently; return the results in input order.

    The engine under ``ParallelBatchNode``, usable from any Trio code.  At most
    ``max_concurrency`` calls run at once; the input (a list, a generator or an
    async iterator) is pulled only as a call slot frees up, so a huge generator
    costs memory in proportion to the cap, not to its length.

    ``fn`` is an ``async def`` function of one item, or a plain ``def`` one: a
    plain one runs inline in the task (so it must not block; the pool yields
    to Trio after each call) unless an ``executor`` runs it elsewhere.

    Args:
        fn: the function of one item.
        items: an iterable or an async iterable.
        max_concurrency: the most calls running at once (None: no cap).
        limiter: a ``trio.CapacityLimiter`` shared with other batches; a call
            holds one of its tokens while it runs.
        max_per_second: the most calls started per second, evenly spaced.
        throttle: a :class:`trioflow.Throttle` shared with other batches (one
            per API provider); a throttled call is made again after the
            Throttle's cool-down.
        executor: where a plain ``fn`` runs (:mod:`trioflow.executors`); inline by default.
        max_pending: the most items in progress (running or waiting to be
            tried again); default 4 x ``max_concurrency``.
        name: the name instruments see (a progress bar's label); default ``fn.__name__``.

    Returns:
        ``[fn(x) for x in items]`` (awaited), in input order.

    Raises:
        BatchError: one or more calls raised an ``Exception``; the first
            failure cancels the calls in flight and starts no new ones.
            ``err.completed`` holds the results that did finish.

    Example::

        pages = await trioflow.parallel_map(fetch, urls, max_concurrency=10)
    """
    check_limits(max_concurrency, limiter, max_per_second, max_pending=max_pending, throttle=throttle)
    node = _mapped(fn, items, name, throttle, executor, "parallel_map")
    async with _watched(node, items):
        pool: _Pool[Any, Any] = _Pool(
            ItemRunner(node, fn),
            items,
            max_concurrency=max_concurrency,
            limiter=limiter,
            max_per_second=max_per_second,
            name=type(node).__name__,
            max_pending=max_pending,
        )
        return await pool.run_to_list()


@overload
def as_completed(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
    throttle: Any = None,
    executor: Any = None,
    max_pending: int | None = None,
    name: str | None = None,
) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[tuple[int, R]]]: ...


@overload
def as_completed(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
    throttle: Any = None,
    executor: Any = None,
    max_pending: int | None = None,
    name: str | None = None,
) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[tuple[int, R]]]: ...


def as_completed(
    fn: Callable[[T], Any],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
    throttle: Any = None,
    executor: Any = None,
    max_pending: int | None = None,
    name: str | None = None,
) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[tuple[int, Any]]]:
    """Run ``fn`` over ``items`` like :func:`parallel_map`; hand out results as they finish.

    Yields a receive channel of ``(index, result)`` pairs in completion order.
    The pool waits while the consumer is busy (no unbounded buffering), but a
    finished call gives back its limiter token and Throttle slot before it
    waits for the consumer.  Leaving the block early cancels the calls still running.

    Raises:
        BatchError: when the block exits, if a call failed.  The first failure
            cancels the calls in flight and ends the iteration.  Results
            already received are not repeated in ``err.completed``.

    The block's body runs inside the nursery that runs the calls, so, as with
    any Trio nursery, an exception raised by the body comes out inside an
    ``ExceptionGroup`` (catch it with ``except*``).  A lone ``BaseException``
    (``KeyboardInterrupt``, a cancel) comes out bare.

    Example::

        async with trioflow.as_completed(fetch, urls, max_concurrency=10) as results:
            async for index, page in results:
                print(index, len(page))
    """
    check_limits(
        max_concurrency, limiter, max_per_second, owner="as_completed", max_pending=max_pending, throttle=throttle
    )
    node = _mapped(fn, items, name, throttle, executor, "as_completed")
    return _as_completed(node, fn, items, max_concurrency, limiter, max_per_second, max_pending)


@asynccontextmanager
async def _as_completed(
    node: Any,
    fn: Callable[[Any], Any],
    items: Iterable[Any] | AsyncIterable[Any],
    max_concurrency: int | None,
    limiter: trio.CapacityLimiter | None,
    max_per_second: float | None,
    max_pending: int | None,
) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[int, Any]]]:
    send, receive = trio.open_memory_channel[tuple[int, Any]](0)
    pool: _Pool[Any, Any] = _Pool(
        ItemRunner(node, fn),
        items,
        max_concurrency=max_concurrency,
        limiter=limiter,
        max_per_second=max_per_second,
        send=send,
        name=type(node).__name__,
        max_pending=max_pending,
    )

    async def feed() -> None:
        # A synchronous close: an ``aclose`` checkpoint here, once the block is
        # cancelled, would raise Cancelled over an exception in flight (a
        # KeyboardInterrupt from an item) and the nursery would swallow it.
        with send:
            await pool.run()

    async with _watched(node, items):
        with bare_base_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                async with receive:
                    yield receive
                nursery.cancel_scope.cancel()
    if pool.failures:
        raise pool.error()

