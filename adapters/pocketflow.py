"""PocketFlow 0.0.3's eleven classes, run by trioflow's Trio engine.

``import adapters.pocketflow as pocketflow`` runs an existing PocketFlow
program unchanged: the same class names and hierarchy, the same methods
(looked up on the instance, so ``node.post = lambda *a: ...`` works), the same
shared-store contents, actions, ``UserWarning`` texts and bare exceptions.
``run()`` works from synchronous code and ``run_async()`` when awaited from an
asyncio loop (``asyncio.run``, ``loop.run_until_complete``), with asyncio code
inside the nodes.

How it runs: the flow is walked by Trio code that mirrors PocketFlow's own
methods line by line; parallel batches go through trioflow's worker pool.
The nodes' ``*_async`` coroutines run as tasks on the caller's asyncio loop
(see :mod:`adapters.aio`: Trio runs as a guest of a plain asyncio loop, or
underneath a trio-asyncio loop); plain methods run inline.  Sync ``run()``
uses ``trio.run`` (in a helper thread when this thread is already inside a
Trio run, e.g. a guest run).

Order: asyncio runs its ready tasks first in, first out, and PocketFlow
programs rely on it (parallel items with equal delays finish in start order).
Trio's scheduler does not promise an order, so a *baton* hands the right to
run user code to one strand (one ``run_async`` call, one parallel item or
sub-flow) at a time, in the order asyncio would: a strand keeps it while a
coroutine it awaits has not suspended (awaiting a coroutine that never
suspends does not yield in asyncio either), gives it up when the coroutine
suspends and queues for it again when the coroutine finishes (in the asyncio
callback, so in asyncio's order).  Parallel sub-flows queue in input order
when the pool pulls them; a parallel node's items start, each as one asyncio
task running its attempts, when the pool pulls them, as ``asyncio.gather``
starts ``_exec(item)`` for each item.  The differential tests check this
order against PocketFlow's; what remains different is time, not order: each
crossing between Trio and asyncio costs a turn of the loop or two, so calls
that PocketFlow makes in the same turn may here be a few turns apart.

Context: PocketFlow awaits a whole flow in its caller's task, so the flow
sees the caller's context variables, a variable set in ``prep_async`` is
seen in ``exec_async``, ``post_async`` and the nodes after, and the caller
sees it after the run; items of a parallel batch and sub-flows of a parallel
batch flow each start from a copy (``gather`` makes one task each).  Here the
same holds: a ``run_async`` call runs its coroutines and plain methods in one
copy of the caller's context and copies the changes back at the end (a sync
``run()`` too).

Cancellation: a cancel of the task awaiting ``run_async`` lands where it
would in PocketFlow: in the coroutine the flow waits for, which may catch
``CancelledError`` and return (the flow then goes on, ``post`` runs), or in
a parallel section, which raises ``CancelledError`` once its items are
cancelled, as a cancelled ``gather`` does.

Beyond PocketFlow: ``AsyncParallelBatchNode`` and ``AsyncParallelBatchFlow``
accept ``max_concurrency=`` (the pool's cap, checked as trioflow's own
parallel nodes check it); ``self.cur_retry`` inside an ``exec_async`` is the
attempt of *that* item, even in a parallel batch (after a run it reads the
last attempt made, on async nodes too, as PocketFlow's repository head sets
it); when a parallel item fails, its siblings are cancelled instead of being
left running in the background, and their ``finally`` blocks run before the
error comes out; a sync node's ``wait`` between retries sleeps without
blocking the asyncio loop.  PocketFlow's private helpers (``_exec``,
``_orch``, ...) are not hooks here: override the public methods.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import threading
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any

import outcome
import trio

from trioflow._errors import BatchError
from trioflow._parallel import _Pool, check_limits

from . import aio as _aio

__all__ = [
    "AsyncBatchFlow",
    "AsyncBatchNode",
    "AsyncFlow",
    "AsyncNode",
    "AsyncParallelBatchFlow",
    "AsyncParallelBatchNode",
    "BaseNode",
    "BatchFlow",
    "BatchNode",
    "Flow",
    "Node",
]

# The attempt of the exec_async call of this parallel item (None outside one).
_ATTEMPT: contextvars.ContextVar[int | None] = contextvars.ContextVar("pocketflow_attempt", default=None)
_MISSING = object()


# -- the baton: user code runs one strand at a time, in asyncio's order ----------------


class _Ticket:
    """A place in the baton's queue: a strand's turn or, with ``then``, a hop.

    A hop is an asyncio callback that runs no user code but schedules
    another (``gather``'s callback when its last task is done, which then
    wakes the task that awaits it): at its turn it queues ``then`` at the end.
    """

    __slots__ = ("abandoned", "event", "granted", "then")

    def __init__(self, then: _Ticket | None = None) -> None:
        self.event = trio.Event()
        self.granted = False
        self.abandoned = False
        self.then = then


class _Baton:
    """A FIFO of strands waiting to run user code; one runs at a time."""

    def __init__(self, host: _aio._Host) -> None:
        self.host = host
        self.busy = False
        self.queue: deque[_Ticket] = deque()

    def enqueue(self, ticket: _Ticket) -> None:
        """Queue from Trio code (dispatches at once)."""
        self.queue.append(ticket)
        self.dispatch()

    def host_enqueue(self, ticket: _Ticket) -> None:
        """Queue from an asyncio callback: the order is asyncio's; the hand-off happens in Trio."""
        self.queue.append(ticket)
        self.host.run_sync_soon(self.dispatch)

    def dispatch(self) -> None:
        while not self.busy and self.queue:
            ticket = self.queue.popleft()
            if ticket.abandoned:
                continue
            if ticket.then is not None:
                self.queue.append(ticket.then)
                continue
            self.busy = True
            ticket.granted = True
            ticket.event.set()

    def release(self) -> None:
        self.busy = False
        self.dispatch()


def _baton(host: _aio._Host) -> _Baton:
    baton: _Baton | None = host.extras.get("pocketflow_baton")
    if baton is None:
        baton = host.extras["pocketflow_baton"] = _Baton(host)
    return baton


class _Run:
    """One ``run_async`` call: where an asyncio cancel of its caller lands.

    PocketFlow runs a flow as one asyncio task, so ``task.cancel()`` throws
    ``CancelledError`` into the coroutine it is suspended in, which may catch
    it and carry on.  Here the cancel goes to what the run's main strand
    waits for: the asyncio task of its current crossing (cancelled as asyncio
    would), or a parallel section (its pool is cancelled, and the section
    raises ``CancelledError``, as a cancelled ``asyncio.gather`` does).  A
    cancel that finds neither (the strand waits for its turn) is raised at the
    strand's next step.
    """

    __slots__ = ("pending", "target")

    def __init__(self) -> None:
        self.target: asyncio.Task[Any] | trio.CancelScope | None = None
        self.pending = False

    def deliver_cancel(self) -> None:
        """Trio-flavored: the caller of ``run_async`` was cancelled."""
        target = self.target
        if isinstance(target, trio.CancelScope):
            target.cancel()
        elif target is None or not target.cancel():  # no crossing, or one that has already finished
            self.pending = True

    def raise_pending(self) -> None:
        """Raise ``CancelledError`` here if a cancel is waiting to land."""
        if self.pending:
            self.pending = False
            raise asyncio.CancelledError


class _Strand:
    """One line of PocketFlow execution (a ``run_async`` call, a parallel item) on Trio.

    Its asyncio crossings and plain method calls run in one ``context``, as
    PocketFlow's code would in one asyncio task; ``run`` is set on a
    ``run_async`` call's main strand only.
    """

    __slots__ = ("baton", "context", "holding", "host", "run")

    def __init__(
        self,
        host: _aio._Host | None,
        baton: _Baton | None,
        context: contextvars.Context | None = None,
        run: _Run | None = None,
    ) -> None:
        self.host = host
        self.baton = baton
        self.context = context
        self.run = run
        self.holding = False

    def sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a plain user method, in the strand's context."""
        context = self.context
        if context is None:
            return fn(*args)
        return context.run(fn, *args)

    async def acquire(self, ticket: _Ticket) -> None:
        try:
            if not ticket.event.is_set():
                assert self.host is not None
                self.host.nudge()  # the ticket comes from an asyncio callback, soon
                await ticket.event.wait()
        except BaseException:
            if ticket.granted:
                self.holding = True
            else:
                ticket.abandoned = True
            raise
        self.holding = True

    def release(self) -> None:
        if self.holding:
            self.holding = False
            assert self.baton is not None
            self.baton.release()

    def start(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None) -> _Started:
        """Start ``coro`` as an asyncio task on the caller's loop, in ``context``; no user code runs yet.

        Its ticket is queued for the baton when the task finishes, in the
        asyncio callback, so strands resume in the order asyncio finished them.
        """
        if self.host is None:  # pragma: no cover - async nodes refuse sync runs before this
            raise RuntimeError("Use run_async.")
        baton = self.baton
        assert baton is not None
        ticket = _Ticket()
        task = self.host.create_task(coro, context)
        task.add_done_callback(lambda _: baton.host_enqueue(ticket))
        return task, ticket

    async def finish(self, started: _Started) -> Any:
        """Wait for a started task, without the baton; return holding it again.

        A Trio cancel cancels the asyncio task and waits until it is done.
        """
        task, ticket = started
        self.release()
        assert self.host is not None
        try:
            return await self.host.wait(task)
        finally:
            with trio.CancelScope(shield=True):
                await self.acquire(ticket)

    async def aio(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``await fn(*args)`` as an asyncio task on the caller's loop.

        The strand keeps the baton until the coroutine first suspends, as an
        asyncio task awaiting a coroutine keeps running until then: a
        coroutine that finishes without suspending (``prep_async`` that only
        reads ``shared``) lets no other strand in.
        """
        host, baton, run = self.host, self.baton, self.run
        if host is None or baton is None:  # pragma: no cover - async nodes refuse sync runs before this
            raise RuntimeError("Use run_async.")
        if run is not None:
            run.raise_pending()
        inline = _INLINE.get(getattr(fn, "__func__", None))
        if inline is not None:  # one of this module's defaults: it would return at once, touching nothing
            return inline(*args)
        ticket: _Ticket | None = None  # made when the coroutine suspends: most never do

        def on_suspend() -> None:  # in the asyncio task: give the baton up, queue again when done
            nonlocal ticket
            ticket = resume = _Ticket()
            host.run_sync_soon(self.release)
            task.add_done_callback(lambda _: baton.host_enqueue(resume))

        task = host.create_task(_watch(on_suspend, fn, *args), self.context)
        if run is not None:
            run.target = task
        try:
            result = await host.wait(task)
        except Exception:
            await self._resume(ticket)
            if run is not None:
                run.raise_pending()  # asyncio throws the cancel in place of the exception
            raise
        except BaseException:
            await self._resume(ticket)
            raise
        await self._resume(ticket)
        if run is not None:
            run.raise_pending()  # asyncio throws the cancel in place of the result
        return result

    async def _resume(self, ticket: _Ticket | None) -> None:
        """After a crossing: wait for the strand's turn again, unless it never gave it up (no ticket)."""
        if self.run is not None:
            self.run.target = None
        if ticket is not None:
            with trio.CancelScope(shield=True):
                await self.acquire(ticket)


async def _watch(on_suspend: Callable[[], None], fn: Callable[..., Any], *args: Any) -> Any:
    """``await fn(*args)``, calling ``on_suspend()`` the first time it suspends.

    The call happens inside the task, so a task cancelled before its first
    step leaves no coroutine never awaited.  A KeyboardInterrupt or
    SystemExit is carried to the Trio side (see :mod:`adapters.aio`).
    """
    try:
        awaitable = fn(*args)
        if not inspect.isawaitable(awaitable):
            raise TypeError(f"object {type(awaitable).__name__} can't be used in 'await' expression")
        return await _Watch(awaitable, on_suspend)
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _aio._Carried(exc) from None


class _Watch:
    __slots__ = ("awaitable", "on_suspend")

    def __init__(self, awaitable: Awaitable[Any], on_suspend: Callable[[], None]) -> None:
        self.awaitable = awaitable
        self.on_suspend = on_suspend

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self.awaitable.__await__()
        try:
            pending = inner.send(None)
        except StopIteration as stop:
            return stop.value
        self.on_suspend()
        return (yield from _forward(inner, pending))


def _forward(inner: Generator[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """``yield from inner`` for an ``inner`` that already yielded ``pending``."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            inner.close()
            raise
        except BaseException as exc:
            try:
                pending = inner.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = inner.send(sent)
            except StopIteration as stop:
                return stop.value


_Started = tuple["asyncio.Task[Any]", _Ticket]


class _ItemFailed(Exception):
    """Stands in the pool for an item's exception, which comes out bare."""


def _check_max_concurrency(owner: Any) -> Any:
    """The owner's ``max_concurrency``, checked as trioflow's own parallel nodes check it."""
    max_concurrency = getattr(owner, "max_concurrency", None)
    check_limits(max_concurrency, None, None, owner=type(owner).__name__)
    return max_concurrency


async def _parallel(
    strand: _Strand,
    owner: Any,
    items: Iterable[Any],
    fn: Callable[[_Strand, Any, _Started | None], Awaitable[Any]],
    prestart: Callable[[_Strand, Any, contextvars.Context | None], _Started | None] | None = None,
) -> list[Any]:
    """``asyncio.gather(*(fn(item) for item in items))`` on trioflow's pool, in asyncio's order.

    The items are listed first, as ``gather(*...)`` does.  They are taken in
    input order when the pool pulls them: ``prestart`` starts an item's first
    asyncio task right then (so, without a cap, all of them start in one turn
    of the loop, in order, as gather's tasks do); an item without one queues
    for the baton instead.  Each item runs in a copy of the strand's context,
    as each task of ``gather`` does.  The parent lets the baton go once it
    has started all its items (gather makes all its tasks before it waits;
    with a cap, at the first, as the pool starts the rest when items finish).
    When the last item finishes, before it lets the baton go, the parent
    queues to resume as ``gather`` wakes its task: an item of a parallel node
    has come back through its task's done callback, which stands for
    ``gather``'s own callback, so the parent queues at once; a sub-flow has
    just finished its task, so ``gather``'s callback queues first (a hop),
    and the parent's turn after it.
    """
    max_concurrency = _check_max_concurrency(owner)
    listed = list(items)
    remaining = len(listed)
    resume: _Ticket | None = None
    baton = strand.baton
    assert baton is not None
    first_error: list[BaseException] = []

    last = len(listed) - 1

    def pulled() -> Iterable[tuple[_Ticket | None, _Started | None, Any, contextvars.Context | None]]:
        for index, item in enumerate(listed):
            context = strand.context.copy() if strand.context is not None else None
            started = prestart(strand, item, context) if prestart is not None else None
            ticket = None
            if started is None:
                ticket = _Ticket()
                baton.enqueue(ticket)
            if index == last or max_concurrency is not None:
                strand.release()  # the parent waits for its items now (gather() of nothing does not)
            yield ticket, started, item, context

    async def job(
        _index: int, entry: tuple[_Ticket | None, _Started | None, Any, contextvars.Context | None]
    ) -> Any:
        ticket, started, item, context = entry
        child = _Strand(strand.host, baton, context)
        try:
            if ticket is not None:
                await child.acquire(ticket)
            return await fn(child, item, started)
        except trio.Cancelled:
            raise
        except BaseException as exc:  # comes out bare, after the others are cancelled
            if not first_error:
                first_error.append(exc)
            raise _ItemFailed from None
        finally:
            if started is not None and not started[1].granted:
                started[1].abandoned = True
            nonlocal remaining, resume
            remaining -= 1
            if remaining == 0 and child.holding and not first_error:
                resume = _Ticket()
                baton.enqueue(resume if started is not None else _Ticket(then=resume))
            child.release()

    pool: _Pool[Any, Any] = _Pool(
        job,
        pulled(),
        max_concurrency=max_concurrency,
        limiter=None,
        max_per_second=None,
        name=type(owner).__name__,
    )
    error: BaseException | None = None
    run = strand.run
    with trio.CancelScope() as scope:
        if run is not None:
            run.target = scope  # a cancel of the caller cancels the whole section
        try:
            results = await pool.run_to_list()
        except BatchError as err:
            error = first_error[0] if first_error else err.exceptions[0]  # else: the input itself raised
        finally:
            if run is not None:
                run.target = None
            if not strand.holding:
                if resume is None:  # no item, or they ended early
                    resume = _Ticket()
                    baton.enqueue(resume)
                with trio.CancelScope(shield=True):
                    await strand.acquire(resume)
    if scope.cancel_called:  # as a cancelled gather() raises, whatever its tasks did
        raise asyncio.CancelledError
    if error is not None:
        raise error
    return results


# -- entry points -------------------------------------------------------------------


def _run_sync(node: BaseNode, shared: Any) -> Any:
    """PocketFlow's sync ``_run`` on the Trio engine (in a copy of the caller's context, copied back)."""

    final: list[contextvars.Context] = []

    async def main() -> Any:
        try:
            return await node._trio_run(_Strand(None, None), shared)
        finally:
            final.append(contextvars.copy_context())

    try:
        if not trio.lowlevel.in_trio_run():
            return trio.run(main)
        # Already inside a Trio run in this thread (a node calling flow.run(), or
        # a guest run on this loop): block it, as PocketFlow's sync run would,
        # in a thread that sees this thread's context variables.
        box: list[outcome.Outcome[Any]] = []

        def in_thread() -> None:
            box.append(outcome.capture(trio.run, main))

        thread = threading.Thread(target=contextvars.copy_context().run, args=(in_thread,), daemon=True)
        thread.start()
        thread.join()
        return box[0].unwrap()
    finally:
        if final:  # PocketFlow runs the flow in the caller's context: its changes stay
            _copy_back(final[0])


async def _run_async(node: AsyncNode, shared: Any) -> Any:
    """PocketFlow's ``_run_async`` on the Trio engine, awaited from asyncio code.

    PocketFlow awaits the whole flow in the caller's task, in the caller's
    context; here its coroutines and plain methods share one copy of that
    context, whose changes are copied back when the run ends.  A cancel of
    the caller lands as it would in PocketFlow (see :class:`_Run`).
    """
    host = _aio.host_for(asyncio.get_running_loop())
    context = contextvars.copy_context()
    if context.get(_ATTEMPT) is not None:  # a run inside a parallel item's exec_async starts afresh
        context.run(_ATTEMPT.set, None)
    run = _Run()
    ticket = _Ticket()

    def on_start() -> None:  # in the Trio run, in submission order: queue for the baton now
        _baton(host).enqueue(ticket)

    async def main() -> Any:
        strand = _Strand(host, _baton(host), context, run)
        try:
            await strand.acquire(ticket)
            run.raise_pending()
            return await node._trio_run_async(strand, shared)
        finally:
            strand.release()

    try:
        return await _aio.run_trio(main, on_start=on_start, on_cancel=run.deliver_cancel)
    finally:
        _copy_back(context)


def _copy_back(context: contextvars.Context) -> None:
    """Set in the current context every variable the run changed in ``context``."""
    for var, value in context.items():
        if var is not _ATTEMPT and var.get(_MISSING) is not value:
            var.set(value)


async def _step(strand: _Strand, node: Any, shared: Any) -> Any:
    """``node._run(shared)`` as PocketFlow's flows call it."""
    if isinstance(node, BaseNode):
        return await node._trio_run(strand, shared)
    return strand.sync(node._run, shared)


# -- the eleven classes ---------------------------------------------------------------
# PocketFlow's own code, method for method; ``_trio_*`` methods are its ``_run``,
# ``_exec``, ``_orch`` (and async twins) made Trio-flavored.  Warnings keep
# PocketFlow's ``stacklevel=1``, so the default filter shows them as often.


class BaseNode:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.successors: dict[str, Any] = {}

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def next(self, node: Any, action: str = "default") -> Any:
        if action in self.successors:
            warnings.warn(f"Overwriting successor for action '{action}'", stacklevel=1)
        self.successors[action] = node
        return node

    def prep(self, shared: Any) -> Any:
        pass

    def exec(self, prep_res: Any) -> Any:
        pass

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        pass

    async def _trio_exec(self, strand: _Strand, prep_res: Any) -> Any:
        return strand.sync(self.exec, prep_res)

    async def _trio_run(self, strand: _Strand, shared: Any) -> Any:
        p = strand.sync(self.prep, shared)
        e = await self._trio_exec(strand, p)
        return strand.sync(self.post, shared, p, e)

    def _run(self, shared: Any) -> Any:
        return _run_sync(self, shared)

    def run(self, shared: Any) -> Any:
        if self.successors:
            warnings.warn("Node won't run successors. Use Flow.", stacklevel=1)
        return self._run(shared)

    def __rshift__(self, other: Any) -> Any:
        return self.next(other)

    def __sub__(self, action: str) -> _ConditionalTransition:
        if isinstance(action, str):
            return _ConditionalTransition(self, action)
        raise TypeError("Action must be a string")


class _ConditionalTransition:
    def __init__(self, src: BaseNode, action: str) -> None:
        self.src, self.action = src, action

    def __rshift__(self, tgt: Any) -> Any:
        return self.src.next(tgt, self.action)


class Node(BaseNode):
    def __init__(self, max_retries: int = 1, wait: float = 0) -> None:
        super().__init__()
        self.max_retries, self.wait = max_retries, wait

    @property
    def cur_retry(self) -> int:
        """The 0-based attempt of the running ``exec`` / ``exec_async`` (per item in parallel batches).

        After a run it reads the last attempt made, on sync and async nodes
        alike, as PocketFlow's repository head sets it (0.0.3 sets it on sync
        nodes only); before any run there is none (AttributeError).
        """
        attempt = _ATTEMPT.get()
        if attempt is not None:
            return attempt
        try:
            return self.__dict__["cur_retry"]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute 'cur_retry'") from None

    @cur_retry.setter
    def cur_retry(self, value: int) -> None:
        self.__dict__["cur_retry"] = value

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
        raise exc

    async def _trio_exec(self, strand: _Strand, prep_res: Any) -> Any:
        for i in range(self.max_retries):
            self.cur_retry = i
            try:
                return strand.sync(self.exec, prep_res)
            except Exception as e:
                if i == self.max_retries - 1:
                    return strand.sync(self.exec_fallback, prep_res, e)
                if self.wait > 0:
                    await trio.sleep(self.wait)
        return None


class BatchNode(Node):
    async def _trio_exec(self, strand: _Strand, items: Any) -> Any:
        return [await Node._trio_exec(self, strand, i) for i in (items or [])]


class Flow(BaseNode):
    def __init__(self, start: Any = None) -> None:
        super().__init__()
        self.start_node = start

    def start(self, start: Any) -> Any:
        self.start_node = start
        return start

    def get_next_node(self, curr: Any, action: Any) -> Any:
        nxt = curr.successors.get(action or "default")
        if not nxt and curr.successors:
            warnings.warn(f"Flow ends: '{action}' not found in {list(curr.successors)}", stacklevel=1)
        return nxt

    async def _trio_orch(self, strand: _Strand, shared: Any, params: Any = None) -> Any:
        curr, p, last_action = copy.copy(self.start_node), (params or {**self.params}), None
        while curr:
            curr.set_params(p)
            last_action = await _step(strand, curr, shared)
            curr = copy.copy(self.get_next_node(curr, last_action))
        return last_action

    async def _trio_run(self, strand: _Strand, shared: Any) -> Any:
        p = strand.sync(self.prep, shared)
        o = await self._trio_orch(strand, shared)
        return strand.sync(self.post, shared, p, o)

    def _run(self, shared: Any) -> Any:
        return _run_sync(self, shared)

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        return exec_res


class BatchFlow(Flow):
    async def _trio_run(self, strand: _Strand, shared: Any) -> Any:
        pr = strand.sync(self.prep, shared) or []
        for bp in pr:
            await self._trio_orch(strand, shared, {**self.params, **bp})
        return strand.sync(self.post, shared, pr, None)

    def _run(self, shared: Any) -> Any:
        return _run_sync(self, shared)


class AsyncNode(Node):
    async def prep_async(self, shared: Any) -> Any:
        pass

    async def exec_async(self, prep_res: Any) -> Any:
        pass

    async def exec_fallback_async(self, prep_res: Any, exc: Exception) -> Any:
        raise exc

    async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        pass

    async def _trio_exec(self, strand: _Strand, prep_res: Any) -> Any:
        return await self._trio_exec_one(strand, prep_res)

    async def _trio_exec_one(self, strand: _Strand, prep_res: Any) -> Any:
        """PocketFlow's ``AsyncNode._exec``: attempts, then the fallback."""
        for i in range(self.max_retries):
            self.cur_retry = i
            try:
                return await strand.aio(self.exec_async, prep_res)
            except Exception as e:
                if i == self.max_retries - 1:
                    return await strand.aio(self.exec_fallback_async, prep_res, e)
                if self.wait > 0:
                    await strand.aio(asyncio.sleep, self.wait)
        return None

    async def run_async(self, shared: Any) -> Any:
        if self.successors:
            warnings.warn("Node won't run successors. Use AsyncFlow.", stacklevel=1)
        return await self._run_async(shared)

    async def _run_async(self, shared: Any) -> Any:
        return await _run_async(self, shared)

    async def _trio_run_async(self, strand: _Strand, shared: Any) -> Any:
        p = await strand.aio(self.prep_async, shared)
        e = await self._trio_exec(strand, p)
        return await strand.aio(self.post_async, shared, p, e)

    async def _trio_run(self, strand: _Strand, shared: Any) -> Any:
        raise RuntimeError("Use run_async.")

    def _run(self, shared: Any) -> Any:
        raise RuntimeError("Use run_async.")


class AsyncBatchNode(AsyncNode, BatchNode):
    async def _trio_exec(self, strand: _Strand, items: Any) -> Any:
        return [await AsyncNode._trio_exec_one(self, strand, i) for i in items]


class AsyncParallelBatchNode(AsyncNode, BatchNode):
    max_concurrency: int | None = None

    def __init__(self, max_retries: int = 1, wait: float = 0, *, max_concurrency: int | None = None) -> None:
        super().__init__(max_retries, wait)
        self.max_concurrency = max_concurrency
        _check_max_concurrency(self)

    async def _trio_exec(self, strand: _Strand, items: Any) -> Any:
        async def finish(s: _Strand, _item: Any, started: _Started | None) -> Any:
            assert started is not None
            return await s.finish(started)

        return await _parallel(strand, self, items, finish, prestart=self._start_item)

    def _start_item(self, strand: _Strand, item: Any, context: contextvars.Context | None) -> _Started:
        """Start the item's attempts as one asyncio task, as ``gather`` starts ``_exec(item)``.

        Within the task the attempts run back to back, so an attempt that fails
        without suspending is retried before the next item starts, as in PocketFlow.
        """
        return strand.start(_item_attempts(self, item), context)


async def _item_attempts(node: AsyncNode, prep_res: Any) -> Any:
    """PocketFlow's ``AsyncNode._exec`` for one parallel item, as asyncio code in its own task.

    The attempt number goes to the task's own context, so ``cur_retry`` is per
    item inside ``exec_async``; the node's attribute keeps the last one set, as
    PocketFlow's does.
    """
    try:
        for i in range(node.max_retries):
            _ATTEMPT.set(i)
            node.cur_retry = i
            try:
                return await node.exec_async(prep_res)
            except Exception as e:
                if i == node.max_retries - 1:
                    return await node.exec_fallback_async(prep_res, e)
                if node.wait > 0:
                    await asyncio.sleep(node.wait)
        return None
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _aio._Carried(exc) from None


class AsyncFlow(Flow, AsyncNode):
    async def _trio_orch_async(self, strand: _Strand, shared: Any, params: Any = None) -> Any:
        curr, p, last_action = copy.copy(self.start_node), (params or {**self.params}), None
        while curr:
            curr.set_params(p)
            if isinstance(curr, AsyncNode):
                last_action = await curr._trio_run_async(strand, shared)
            else:
                last_action = await _step(strand, curr, shared)
            curr = copy.copy(self.get_next_node(curr, last_action))
        return last_action

    async def _trio_run_async(self, strand: _Strand, shared: Any) -> Any:
        p = await strand.aio(self.prep_async, shared)
        o = await self._trio_orch_async(strand, shared)
        return await strand.aio(self.post_async, shared, p, o)

    async def post_async(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        return exec_res


class AsyncBatchFlow(AsyncFlow, BatchFlow):
    async def _trio_run_async(self, strand: _Strand, shared: Any) -> Any:
        pr = await strand.aio(self.prep_async, shared) or []
        for bp in pr:
            await self._trio_orch_async(strand, shared, {**self.params, **bp})
        return await strand.aio(self.post_async, shared, pr, None)


class AsyncParallelBatchFlow(AsyncFlow, BatchFlow):
    max_concurrency: int | None = None

    def __init__(self, start: Any = None, *, max_concurrency: int | None = None) -> None:
        super().__init__(start)
        self.max_concurrency = max_concurrency
        _check_max_concurrency(self)

    async def _trio_run_async(self, strand: _Strand, shared: Any) -> Any:
        pr = await strand.aio(self.prep_async, shared) or []

        async def one(s: _Strand, bp: Any, _: _Started | None) -> Any:
            return await self._trio_orch_async(s, shared, {**self.params, **bp})

        await _parallel(strand, self, pr, one)
        return await strand.aio(self.post_async, shared, pr, None)


def _nothing(*_: Any) -> None:
    return None


def _reraise(prep_res: Any, exc: Exception) -> Any:
    raise exc


def _exec_res(shared: Any, prep_res: Any, exec_res: Any) -> Any:
    return exec_res


# The default coroutines of the classes above, as what they return: awaiting
# one never suspends and has no effect, so it needs no asyncio task (most
# flows keep the default prep_async and post_async).
_INLINE: dict[Any, Callable[..., Any]] = {
    AsyncNode.prep_async: _nothing,
    AsyncNode.exec_async: _nothing,
    AsyncNode.post_async: _nothing,
    AsyncNode.exec_fallback_async: _reraise,
    AsyncFlow.post_async: _exec_res,
}
