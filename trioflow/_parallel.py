"""The worker pool under every parallel path of trioflow.

``parallel_map`` and ``as_completed`` are the public faces; ``ParallelBatchNode``
and ``ParallelBatchFlow`` run on the same :class:`_Pool`.

How it works: with a cap of N, N worker tasks are started in a nursery and each
pulls the next item from the input only when it is free, so a generator or an
async iterator is consumed lazily and memory grows with N, not with the input.
With no cap, one task is started per item, as a raw nursery would.  A shared
``trio.CapacityLimiter`` and a rate cap combine with either.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Generic, Literal, TypeVar

import trio

from ._errors import BatchError, add_note

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["as_completed", "parallel_map"]

T = TypeVar("T")
R = TypeVar("R")

OnError = Literal["raise", "collect"]

_PENDING: Any = object()  # marks a result slot whose item has not finished


def check_limits(
    max_concurrency: int | None,
    limiter: trio.CapacityLimiter | None,
    max_per_second: float | None,
    owner: str = "parallel_map",
) -> None:
    """Raise a clear error for a bad cap, limiter or rate."""
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
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


@contextmanager
def bare_base_exception() -> Iterator[None]:
    """Let a lone ``KeyboardInterrupt``-like ``BaseException`` out of the pool's nursery bare.

    The pool catches every ``Exception`` of its items itself (into a
    ``BatchError`` or a result slot), so what a worker can raise through the
    nursery is ``trio.Cancelled`` or another ``BaseException``.  Trio wraps it
    in a ``BaseExceptionGroup``; DESIGN.md promises such exceptions are never
    wrapped, so a single one (beside the ``Cancelled`` of its siblings, which
    it makes moot) is re-raised as it is.  Several at once stay a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        _, rest = group.split(trio.Cancelled)
        if rest is not None and len(rest.exceptions) == 1:
            (lone,) = rest.exceptions
            if not isinstance(lone, (Exception, BaseExceptionGroup)):
                raise lone from None
        raise


class _Rate:
    """Spaces item starts ``1 / per_second`` apart (no bursts)."""

    __slots__ = ("interval", "next_start")

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.next_start = -math.inf

    async def wait(self) -> None:
        now = trio.current_time()
        start = max(now, self.next_start)
        self.next_start = start + self.interval
        if start > now:
            await trio.sleep_until(start)


class _Pool(Generic[T, R]):
    """One parallel run of ``job(index, item)`` over ``items``.

    Results go to ``self.results`` (a list in input order) or, when ``send`` is
    given, to a channel in completion order.  Failures are kept in
    ``self.failures``; with ``on_error="raise"`` the first one cancels the
    items in flight and stops the pulling of new ones.
    """

    def __init__(
        self,
        job: Callable[[int, T], Awaitable[R]],
        items: Iterable[T] | AsyncIterable[T],
        *,
        max_concurrency: int | None,
        limiter: trio.CapacityLimiter | None,
        max_per_second: float | None,
        on_error: OnError = "raise",
        send: trio.MemorySendChannel[tuple[int, R | Exception]] | None = None,
        name: str = "parallel_map",
    ) -> None:
        self.job = job
        self.max_concurrency = max_concurrency
        self.limiter = limiter
        self.rate = _Rate(max_per_second) if max_per_second is not None else None
        self.on_error = on_error
        self.send = send
        self.name = name
        self.results: list[Any] | None = [] if send is None else None
        self.failures: list[Exception] = []
        self.undelivered: dict[int, Any] = {}  # finished, but the send was cut short (as_completed)
        self.count = 0
        self.stopped = False
        self._cancel_scope: trio.CancelScope | None = None
        self._sync_it: Iterable[T] | None = None
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
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def _input_failed(self, exc: Exception) -> None:
        """The input itself raised while pulled: the batch stops, whatever ``on_error`` says."""
        self._fail(exc, f"raised while {self.name} pulled item {self.count} from its input")

    def _next_index(self) -> int:
        index = self.count
        self.count += 1
        if self.results is not None:
            self.results.append(_PENDING)
        return index

    def _pull_sync(self) -> tuple[int, T] | None:
        """The next (index, item) of a plain iterable, or None when it is done or the pool stopped.

        A plain function, not a coroutine: pulling from a list or a generator
        never blocks, and this is the per-item hot path of every worker.
        """
        if self.stopped:
            return None
        try:
            item = next(self._sync_it)  # type: ignore[call-overload]
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

    # -- running one item ----------------------------------------------------

    def _failed(self, index: int, exc: Exception) -> bool:
        """Note item ``index``'s failure; True if its exception stands in its result slot."""
        if self.on_error == "raise":
            self._fail(exc, f"raised by item {index} of {self.name}")
            return False
        add_note(exc, f"raised by item {index} of {self.name}")
        return True

    async def _one(self, index: int, item: T, use_limiter: bool) -> None:
        try:
            if use_limiter and self.limiter is not None:
                async with self.limiter:
                    # The rate slot is taken once the token is held, so that a
                    # wait for the limiter cannot bunch up the starts.
                    if self.rate is not None:
                        await self.rate.wait()
                    value: R | Exception = await self.job(index, item)
            else:
                if self.rate is not None:
                    await self.rate.wait()
                value = await self.job(index, item)
        except Exception as exc:
            if not self._failed(index, exc):
                return
            value = exc
        if self.results is not None:
            self.results[index] = value
        else:
            assert self.send is not None
            try:
                await self.send.send((index, value))
            except trio.BrokenResourceError:  # the consumer left early: stop quietly
                self.stopped = True
                if self._cancel_scope is not None:
                    self._cancel_scope.cancel()
            except BaseException:
                self.undelivered[index] = value  # so that BatchError.completed still has it
                raise

    async def _worker(self) -> None:
        """Run items one after another, pulling the next only when free."""
        one = self._one
        if self._sync_it is None:
            while (got := await self._pull_async()) is not None:
                await one(got[0], got[1], True)
            return
        pull = self._pull_sync
        results = self.results
        if results is None or self.rate is not None or self.limiter is not None:
            while (got := pull()) is not None:
                await one(got[0], got[1], True)
            return
        # The hot path (plain input, results in a list, no limiter, no rate):
        # ``_pull_sync`` and ``_one`` inlined, so an item costs one await of the
        # job and a few attribute reads.
        job = self.job
        source = self._sync_it
        while not self.stopped:
            try:
                item = next(source)  # type: ignore[call-overload]
            except StopIteration:
                self.stopped = True
                return
            except Exception as exc:
                self._input_failed(exc)
                return
            index = self.count
            self.count = index + 1
            results.append(_PENDING)
            try:
                results[index] = await job(index, item)
            except Exception as exc:
                if not self._failed(index, exc):
                    return
                results[index] = exc

    async def _one_holding(self, index: int, item: T, borrower: object) -> None:
        assert self.limiter is not None
        try:
            await self._one(index, item, False)
        finally:
            self.limiter.release_on_behalf_of(borrower)

    async def _spawn_all(self, nursery: trio.Nursery) -> None:
        """No cap: one task per item; with a limiter, take a token before pulling."""
        limiter = self.limiter
        if limiter is None:
            if self._sync_it is not None:
                pull = self._pull_sync
                start_soon = nursery.start_soon
                one = self._one
                while (got := pull()) is not None:
                    start_soon(one, got[0], got[1], False)
                return
            while (got := await self._pull_async()) is not None:
                nursery.start_soon(self._one, got[0], got[1], False)
            return
        while True:
            borrower = object()
            await limiter.acquire_on_behalf_of(borrower)
            got = self._pull_sync() if self._sync_it is not None else await self._pull_async()
            if got is None:
                limiter.release_on_behalf_of(borrower)
                return
            nursery.start_soon(self._one_holding, got[0], got[1], borrower)

    async def run(self) -> None:
        """Run every item; failures are left in ``self.failures``."""
        try:
            with bare_base_exception():
                async with trio.open_nursery() as nursery:
                    self._cancel_scope = nursery.cancel_scope
                    if self.max_concurrency is None:
                        await self._spawn_all(nursery)
                    else:
                        for _ in range(self.max_concurrency):
                            nursery.start_soon(self._worker)
        finally:
            # An async generator left half-pulled (a failure, a cancel, an early
            # exit) is closed now, as ``aclosing`` would, not later by Trio's
            # garbage-collection hook, which warns and spawns a task for it.
            # Other async iterables (a channel the caller owns) are left open.
            if inspect.isasyncgen(self._async_it):
                await self._async_it.aclose()

    def error(self) -> BatchError:
        """The ``BatchError`` for the failures so far, with what did complete."""
        completed: dict[int, Any] = self.undelivered
        if self.results is not None:
            completed = {i: r for i, r in enumerate(self.results) if r is not _PENDING}
        n = len(self.failures)
        return BatchError(
            f"{n} item{'s' if n != 1 else ''} of {self.name} failed", self.failures, completed
        )

    async def run_to_list(self) -> list[R | Exception]:
        """Run every item and return the results in input order, or raise BatchError."""
        await self.run()
        if self.failures:
            raise self.error()
        assert self.results is not None
        return self.results


async def parallel_map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
) -> list[R]:
    """Run ``await fn(item)`` for every item concurrently; return the results in input order.

    The engine under ``ParallelBatchNode``, usable from any Trio code.  At most
    ``max_concurrency`` calls run at once; the input (a list, a generator or an
    async iterator) is pulled only as a call slot frees up, so a huge generator
    costs memory in proportion to the cap, not to its length.

    Args:
        fn: an async function of one item.
        items: an iterable or an async iterable.
        max_concurrency: the most calls running at once (None: no cap).
        limiter: a ``trio.CapacityLimiter`` shared with other batches; a call
            holds one of its tokens while it runs.
        max_per_second: the most calls started per second, evenly spaced.

    Returns:
        ``[await fn(x) for x in items]``, in input order.

    Raises:
        BatchError: one or more calls raised an ``Exception``; the first
            failure cancels the calls in flight and starts no new ones.
            ``err.completed`` holds the results that did finish.

    Example::

        pages = await trioflow.parallel_map(fetch, urls, max_concurrency=10)
    """
    check_limits(max_concurrency, limiter, max_per_second)

    async def job(_index: int, item: T) -> R:
        return await fn(item)

    pool: _Pool[T, R] = _Pool(
        job, items, max_concurrency=max_concurrency, limiter=limiter, max_per_second=max_per_second
    )
    return await pool.run_to_list()  # type: ignore[return-value]


@asynccontextmanager
async def as_completed(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    max_concurrency: int | None = None,
    limiter: trio.CapacityLimiter | None = None,
    max_per_second: float | None = None,
) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[int, R]]]:
    """Run ``fn`` over ``items`` like :func:`parallel_map`; hand out results as they finish.

    Yields a receive channel of ``(index, result)`` pairs in completion order.
    The pool waits while the consumer is busy (no unbounded buffering).
    Leaving the block early cancels the calls still running.

    Raises:
        BatchError: when the block exits, if a call failed.  The first failure
            cancels the calls in flight and ends the iteration.  Results
            already received are not repeated in ``err.completed``.

    The block's body runs inside the nursery that runs the calls, so, as with
    any Trio nursery, an exception raised by the body comes out inside an
    ``ExceptionGroup`` (catch it with ``except*``).

    Example::

        async with trioflow.as_completed(fetch, urls, max_concurrency=10) as results:
            async for index, page in results:
                print(index, len(page))
    """
    check_limits(max_concurrency, limiter, max_per_second, owner="as_completed")
    send, receive = trio.open_memory_channel[tuple[int, Any]](0)

    async def job(_index: int, item: T) -> R:
        return await fn(item)

    pool: _Pool[T, R] = _Pool(
        job,
        items,
        max_concurrency=max_concurrency,
        limiter=limiter,
        max_per_second=max_per_second,
        send=send,
        name="as_completed",
    )

    async def feed() -> None:
        # A synchronous close: an ``aclose`` checkpoint here, once the block is
        # cancelled, would raise Cancelled over an exception in flight (a
        # KeyboardInterrupt from an item) and the nursery would swallow it.
        with send:
            await pool.run()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        async with receive:
            yield receive
        nursery.cancel_scope.cancel()
    if pool.failures:
        raise pool.error()
