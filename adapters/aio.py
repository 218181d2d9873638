"""Bridges between trioflow and asyncio: asyncio nodes in Trio flows, Trio flows under asyncio.

Two directions, each crossing spelled out:

* **asyncio inside Trio.** :class:`AsyncioNode` wraps an asyncio node (any
  object with coroutine methods ``prep_async`` / ``exec_async`` / ``post_async``,
  such as PocketFlow's ``AsyncNode`` and its batch kinds) so it wires into a
  trioflow flow with ``>>`` like any node.  :func:`call_asyncio` awaits one
  asyncio coroutine function from Trio code and :func:`iterate_asyncio`
  consumes an asyncio async iterator (a streaming LLM client, say).  The
  asyncio code runs on an asyncio loop: the caller's ``trio_asyncio`` loop,
  one the node opens for its run when there is none, or, under
  :func:`run_flow`, the very asyncio loop that called the flow.

* **Trio under asyncio.** ``await run_flow(flow, shared)`` runs a trioflow flow
  from plain asyncio code (``asyncio.run``, a FastAPI handler, a notebook).

Design choice for the second direction: **Trio guest mode**
(``trio.lowlevel.start_guest_run``), not trio-asyncio.  trio-asyncio runs an
asyncio loop *on top of* Trio, so it cannot serve a caller whose asyncio loop
is already running; guest mode runs Trio's scheduler as callbacks on the
caller's own loop.  That has a second benefit: the asyncio nodes of a flow run
by :func:`run_flow` execute on the caller's loop itself, so loop-bound objects
the caller made (an ``aiohttp.ClientSession``, an ``asyncio.Lock``) work inside
them.  Trio allows one run per thread, so every call made from one loop shares
one guest run (:class:`_GuestHost`).  It starts with the first call and lasts
as long as the loop: ``loop.close()`` (which ``asyncio.run`` calls) ends it
first, so a call costs no Trio start-up, and a loop that is never closed keeps
its idle guest run (a parked thread) until the process exits.  While it lasts,
the loop's thread is inside a Trio run, so ``trio.run`` (``trioflow.run``)
cannot be called from that thread: await :func:`run_flow` instead, or call it
from another thread (``adapters.pocketflow``'s sync ``run()`` does).  One case is
different: once ``trio_asyncio`` is imported, ``asyncio.run`` itself builds
trio-asyncio loops, which already run on Trio; there the call runs as a task
of that Trio run (:class:`_TrioAsyncioHost`).  This module imports
``trio_asyncio`` only when Trio code needs an asyncio loop of its own, so a
program that only uses :func:`run_flow` keeps asyncio's own loops.

Context variables follow the calls: a flow awaited by :func:`run_flow` sees
the caller's context (a copy, as ``asyncio.create_task`` makes one), however
many callers share the guest run; and the coroutines of one run of an
:class:`AsyncioNode` share one context, so a variable set in ``prep_async``
is seen by ``exec_async`` and ``post_async`` (the items of a parallel batch
each start from a copy of it, as under ``asyncio.gather``).

Cancellation crosses both ways: a Trio cancel (``move_on_after``, a failing
sibling) cancels the asyncio task underneath and waits until its ``finally``
blocks and ``async with`` exits have run; an asyncio cancel of ``run_flow``
cancels the flow and waits for it to unwind before ``CancelledError`` is
raised.

``KeyboardInterrupt`` and ``SystemExit`` raised by asyncio code come out of
the crossing bare, in the Trio code that awaited it (asyncio would otherwise
re-raise them out of the event loop, which leaves trio-asyncio's loop dead
and its callers waiting forever).  This holds for every crossing made here:
the coroutine of each crossing is guarded.  It cannot hold for what this
module does not run: ``trio_asyncio.aio_as_trio`` called directly (it hangs on
trio-asyncio 0.16), a task or callback that the asyncio code starts itself
(``asyncio.create_task``, ``loop.call_soon``), and a Ctrl-C that lands inside
the asyncio loop's own machinery rather than in a coroutine: there asyncio
re-raises the exception out of trio-asyncio's loop, which is trio-asyncio's
to fix.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import importlib
import sys
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import attrs
import outcome
import trio

import trioflow

__all__ = [
    "AsyncioBatchNode",
    "AsyncioIterator",
    "AsyncioNode",
    "AsyncioParallelBatchNode",
    "call_asyncio",
    "iterate_asyncio",
    "run_flow",
    "run_trio",
]

T = TypeVar("T")

#: How many turns of the loop Trio keeps ticking, with nothing to do but wait
#: for asyncio, before it parks in its I/O thread (see :meth:`_GuestHost._keep_awake`).
_SPIN = 16
#: How many ticks a Trio task waiting for an asyncio task looks whether it is done, before a callback wakes it.
_POLL = 4

_INSTALL = 'pip install -e ".[asyncio]"'


def _trio_asyncio() -> Any:
    """trio_asyncio, imported on first use: importing it makes ``asyncio.run`` and
    ``asyncio.new_event_loop`` build trio-asyncio loops process-wide, which a
    program that only uses :func:`run_flow` or ``adapters.pocketflow`` should not get."""
    module = sys.modules.get("trio_asyncio")
    if module is None:
        try:
            # Not a static import: trio-asyncio ships no type information, and a
            # user's ``mypy --strict`` that reads this module must not trip on it.
            module = importlib.import_module("trio_asyncio")
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "adapters.aio needs trio-asyncio to run asyncio code from a Trio program: install the "
                f"'asyncio' extra ({_INSTALL} from a clone of trioflow, or pip install 'trioflow[asyncio]')",
                name=exc.name,
            ) from exc
    return module


def _on_trio_asyncio(loop: asyncio.AbstractEventLoop) -> bool:
    module = sys.modules.get("trio_asyncio")
    return module is not None and isinstance(loop, module.BaseTrioEventLoop)


# -- one crossing into asyncio ----------------------------------------------------


class _Carried(BaseException):
    """A ``KeyboardInterrupt`` or ``SystemExit`` of asyncio code, on its way to Trio.

    An asyncio task re-raises those two out of the event loop after storing
    them; raised as this instead, they stay in the task, and the Trio side
    raises the original, bare.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


async def _guard(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """asyncio-flavored: ``await fn(*args)``, with KeyboardInterrupt/SystemExit carried (see :class:`_Carried`)."""
    try:
        return await fn(*args)
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Carried(exc) from None


def _result(task: asyncio.Future[Any]) -> Any:
    """``task.result()``, with a carried KeyboardInterrupt/SystemExit raised bare."""
    try:
        return task.result()
    except _Carried as carried:
        error = carried.error
    raise error  # outside the handler: the error keeps its own __context__


def _create_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None
) -> asyncio.Task[Any]:
    """``loop.create_task(coro)`` running in ``context`` (or a copy of the current one)."""
    if context is None:
        return loop.create_task(coro)
    return loop.create_task(coro, context=context)


async def _wait_aio(task: asyncio.Future[Any]) -> Any:
    """Trio-flavored: wait for ``task`` on a trio-asyncio loop (a Trio cancel cancels it and waits on)."""
    try:
        return await _trio_asyncio().run_aio_future(task)
    except _Carried as carried:
        error = carried.error
    raise error


# -- Trio as a guest of an asyncio loop ------------------------------------------


class _Job:
    """One ``run_trio`` call: a Trio function, its caller's context, its outcome, its cancel scope.

    The caller awaits ``future``, which the job completes with nothing: its
    outcome is in ``result``.  A cancel of the caller cancels the future it
    awaits, so after one the caller awaits a new one.
    """

    __slots__ = (
        "args", "async_fn", "cancel_requested", "context", "future", "on_cancel", "on_start", "result", "scope"
    )

    def __init__(
        self,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        future: asyncio.Future[None],
        on_start: Callable[[], None] | None,
        on_cancel: Callable[[], None] | None,
    ) -> None:
        self.async_fn = async_fn
        self.args = args
        self.future = future
        self.on_start = on_start
        self.on_cancel = on_cancel
        self.context = contextvars.copy_context()
        self.result: outcome.Outcome[Any] | None = None
        self.scope: trio.CancelScope | None = None
        self.cancel_requested = False

    def finish(self, result: outcome.Outcome[Any]) -> None:
        """Record the outcome and wake the caller (from either side, in the loop's thread)."""
        if self.result is None:
            self.result = result
        if not self.future.done():
            self.future.set_result(None)

    def cancel(self) -> None:
        """Trio-flavored (runs in the Trio run): cancel the job, now or as soon as it starts."""
        if self.on_cancel is not None:
            self.on_cancel()
            return
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()


class _Host:
    """The Trio run that serves the Trio calls made from one asyncio loop.

    ``host_*`` methods are asyncio-flavored (called from the loop's
    callbacks and coroutines), the others Trio-flavored.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self.token: trio.lowlevel.TrioToken | None = None
        self.extras: dict[str, Any] = {}  # per-run state of other adapters (the PocketFlow baton)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        if loop is None:  # pragma: no cover - a host is reached through its loop
            raise RuntimeError("the asyncio loop of this Trio host is gone")
        return loop

    def host_submit(self, job: _Job) -> None:
        raise NotImplementedError

    async def host_wait_closed(self) -> None:
        """Wait until the Trio run is gone if it is ending (guest runs that end when idle only)."""

    def run_sync_soon(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` inside the Trio run, soon, in FIFO order; callable from either side."""
        assert self.token is not None
        self.token.run_sync_soon(fn)

    def nudge(self) -> None:
        """Trio-flavored: a Trio task starts waiting for an answer from asyncio (see :class:`_GuestHost`)."""

    async def _run_job(self, job: _Job) -> None:
        # Runs in a copy of the caller's context (see ``_drain``).
        result: outcome.Outcome[Any] | None = None
        try:
            with trio.CancelScope() as scope:
                job.scope = scope
                if job.cancel_requested:
                    scope.cancel()
                _HOST.set(self)
                try:
                    value = await job.async_fn(*job.args)
                except trio.Cancelled:
                    raise
                except BaseException as exc:  # handed to the asyncio caller, who raises it
                    result = outcome.Error(exc)
                else:
                    result = outcome.Value(value)
        finally:
            self._job_done()
            # No outcome: cancelled by its own scope, or from outside (the run is shutting down).
            job.finish(result if result is not None else outcome.Error(asyncio.CancelledError()))

    def _job_done(self) -> None:
        pass

    def create_task(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None) -> asyncio.Task[Any]:
        """Start ``coro`` as an asyncio task on the loop, in ``context`` (from the Trio side)."""
        return _create_task(self.loop, coro, context)

    def wait(self, task: asyncio.Future[Any]) -> Awaitable[Any]:
        """Trio-flavored: wait for an asyncio task of the loop; a Trio cancel cancels it and waits on."""
        raise NotImplementedError

    def call(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], context: contextvars.Context | None
    ) -> Awaitable[Any]:
        """Trio-flavored: ``await fn(*args)`` as an asyncio task on the loop, in ``context``.

        A Trio cancel cancels the asyncio task and keeps waiting until it is
        done, so its ``finally`` blocks have run when ``trio.Cancelled`` comes out.
        """
        return self.wait(self.create_task(_guard(fn, *args), context))


class _GuestHost(_Host):
    """A Trio guest run on a plain asyncio loop, shared by all calls from that loop.

    Trio allows one run per thread, so the calls share it.  It starts with the
    first job and lasts until ``loop.close()``, which is wrapped (on this loop
    object only) to end the run before the loop closes; ``asyncio.run`` and
    ``loop.run_until_complete(...); loop.close()`` alike then leave no Trio
    run behind.  On a loop object that cannot take the wrapper, the run ends
    whenever no job is left, and the next job starts a new one.

    A guest run whose tasks all wait parks in a helper thread (Trio's I/O
    wait), and every wake-up from asyncio then costs two thread hand-offs.  A
    Trio task waiting for asyncio expects its answer within a few turns of the
    loop, so :meth:`_keep_awake` keeps Trio ticking, as a callback of the loop,
    until no answer has come for ``_SPIN`` turns.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.state = "idle"  # idle -> running -> closing -> idle
        self.jobs = 0
        self.pending: list[_Job] = []
        self.progress = 0  # answers from asyncio so far (read by _keep_awake)
        self._nursery: trio.Nursery | None = None
        self._wake: trio.Event | None = None
        self._stop_requested = False
        self.finished: asyncio.Future[None] | None = None
        self.lasting = self._wrap_close(loop)

    def _wrap_close(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Make ``loop.close()`` end the guest run first; False if this loop object cannot be wrapped."""
        original = loop.close
        host = self

        def close() -> None:
            if loop.is_running() or loop.is_closed():
                original()  # raises, or does nothing
                return
            while host.state != "idle":  # (a call made while it ends starts it again)
                loop.run_until_complete(host.host_shutdown())
            _HOSTS.pop(loop, None)
            try:
                del loop.close
            except AttributeError:  # pragma: no cover - already restored
                pass
            original()

        try:
            loop.close = close  # type: ignore[method-assign]
        except AttributeError:  # a loop class that does not allow it
            return False
        return True

    def host_submit(self, job: _Job) -> None:
        self.pending.append(job)
        self.progress += 1
        if self.state == "idle":
            self._start()
        elif self.state == "running" and self.token is not None:
            self.token.run_sync_soon(self._drain)
        # "running" before the token exists, or "closing": _main / the next run drains it.

    def _start(self) -> None:
        self.state = "running"
        self.jobs = 0
        self._stop_requested = False
        self.finished = self.loop.create_future()
        loop = self.loop
        # An empty context: the long-lived run must not hold on to the first caller's variables.
        contextvars.Context().run(
            trio.lowlevel.start_guest_run,
            self._main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=self._host_done,
            host_uses_signal_set_wakeup_fd=True,
            strict_exception_groups=True,
        )

    def run_sync_soon(self, fn: Callable[[], Any]) -> None:
        self.progress += 1
        if self.token is None:  # the run is starting: _main drains these first
            self.extras.setdefault("_early", []).append(fn)
        else:
            self.token.run_sync_soon(fn)

    async def host_wait_closed(self) -> None:
        """Wait until a run that is ending has ended, so the loop may close right after."""
        if self.state == "closing" and self.finished is not None:
            await asyncio.shield(self.finished)

    async def host_shutdown(self) -> None:
        """End the guest run (its jobs are cancelled) and wait until it is gone."""
        if self.state == "running":
            self.state = "closing"
            self._stop_requested = True
            if self.token is not None:
                self.token.run_sync_soon(self._stop)
        if self.finished is not None and not self.finished.done():
            await asyncio.shield(self.finished)

    def _stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _host_done(self, result: outcome.Outcome[None]) -> None:
        self.state = "idle"
        self.token = None
        self._nursery = None
        self._wake = None
        self.extras.clear()
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)
        if isinstance(result, outcome.Error):  # a Ctrl-C that Trio's own handler delivered, say
            for job in self.pending:
                job.finish(result)
            self.pending.clear()
            error = result.error
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]  # the run's nursery wrapped it
            if not isinstance(error, Exception):
                raise error  # out of the loop, as from any asyncio callback
            self.loop.call_exception_handler({"message": "trioflow's Trio guest run failed", "exception": result.error})
            return
        if self.pending:
            self._start()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._wake = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for fn in self.extras.pop("_early", ()):
                fn()
            if self._stop_requested:
                nursery.cancel_scope.cancel()
            self._drain()
            if self.lasting:
                nursery.start_soon(self._keep_awake)
                await trio.sleep_forever()  # until host_shutdown cancels the nursery

    async def _keep_awake(self) -> None:
        """Tick while Trio waits for asyncio, so Trio does not park before the answer.

        Woken by :meth:`nudge` (a Trio task starts waiting for asyncio, or a
        job ends: the next call often follows at once), it yields to the loop
        until something comes from asyncio (:attr:`progress`) or ``_SPIN``
        turns have passed, then sleeps again.
        """
        while True:
            assert self._wake is not None
            await self._wake.wait()
            self._wake = trio.Event()
            seen = self.progress
            for _ in range(_SPIN):
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self.pending:  # a call came in: start it now, a turn before its run_sync_soon would
                    self._drain()
                    break
                if self.progress != seen:
                    break

    def nudge(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _drain(self) -> None:
        if self.state != "running" or self._nursery is None:
            return
        jobs, self.pending = self.pending, []
        for job in jobs:
            self.jobs += 1
            if job.on_start is not None:
                job.on_start()
            # The job's task gets a copy of its caller's context, not of the run's.
            job.context.run(self._nursery.start_soon, self._run_job, job)

    def _job_done(self) -> None:
        self.jobs -= 1
        if self.jobs == 0 and not self.pending:
            if self.lasting:
                self.nudge()
            else:
                self.state = "closing"

    async def wait(self, task: asyncio.Future[Any]) -> Any:
        # Most crossings finish within a turn or two of the loop: look for
        # that first, each tick, before paying for a done callback and a
        # wake-up.  (A cancel meanwhile is seen by the wait below.)
        for _ in range(_POLL):
            await trio.lowlevel.cancel_shielded_checkpoint()
            if task.done():
                return _result(task)
        # Like trio_asyncio.run_aio_future, but the wake-up goes through
        # run_sync_soon: the task completes in a host callback, between ticks.
        token = self.token
        assert token is not None
        trio_task = trio.lowlevel.current_task()
        raise_cancel: Callable[[], Any] | None = None

        def done(_: asyncio.Future[Any]) -> None:
            self.progress += 1
            token.run_sync_soon(trio.lowlevel.reschedule, trio_task, outcome.capture(_result, task))

        task.add_done_callback(done)
        self.nudge()

        def abort(raise_cancel_arg: Callable[[], Any]) -> trio.lowlevel.Abort:
            nonlocal raise_cancel
            raise_cancel = raise_cancel_arg
            task.cancel()
            return trio.lowlevel.Abort.FAILED  # keep waiting until the asyncio task has unwound

        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)
        except asyncio.CancelledError:
            if raise_cancel is None:
                raise
            raise_cancel()
            raise  # pragma: no cover - raise_cancel always raises


class _TrioAsyncioHost(_Host):
    """The caller's asyncio loop is a trio-asyncio loop: the Trio run is already there.

    (Importing trio_asyncio makes ``asyncio.run`` and ``asyncio.new_event_loop``
    build trio-asyncio loops, so this is the common case once it is imported.)
    """

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self.token = trio.lowlevel.current_trio_token()

    def host_submit(self, job: _Job) -> None:
        token = trio.lowlevel.current_trio_token()
        if token is not self.token:  # the loop runs under a new Trio run: start afresh
            self.token = token
            self.extras.clear()
        if job.on_start is not None:
            job.on_start()
        # trio_as_future runs the job in a copy of the context it is called in.
        job.context.run(self.loop.trio_as_future, self._run_job, job)  # type: ignore[attr-defined]

    def wait(self, task: asyncio.Future[Any]) -> Awaitable[Any]:
        return _wait_aio(task)


_HOST: contextvars.ContextVar[_Host | None] = contextvars.ContextVar("trioflow_asyncio_host", default=None)
_HOSTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Host] = weakref.WeakKeyDictionary()


def current_host() -> _Host | None:
    """The asyncio loop (as a host) that called the Trio code running now, if any."""
    return _HOST.get()


def host_for(loop: asyncio.AbstractEventLoop) -> _Host:
    """asyncio-flavored: the host that runs Trio calls made from ``loop``."""
    host = _HOSTS.get(loop)
    if host is None:
        if _on_trio_asyncio(loop):
            host = _TrioAsyncioHost(loop)
        else:
            host = _GuestHost(loop)
        _HOSTS[loop] = host
    return host


async def run_trio(
    async_fn: Callable[..., Awaitable[Any]],
    *args: Any,
    on_start: Callable[[], None] | None = None,
    on_cancel: Callable[[], None] | None = None,
) -> Any:
    """asyncio-flavored: run the Trio function ``await async_fn(*args)`` from asyncio code.

    On a plain asyncio loop it runs in the loop's Trio guest run (started if
    needed); on a trio-asyncio loop, in the Trio run underneath.  It runs in a
    copy of the caller's context.  ``on_start`` is called inside the Trio
    run, in submission order, just before the call's task is started.

    Cancelling the awaiting asyncio task cancels the Trio call and waits
    until it has unwound; then ``asyncio.CancelledError`` is raised.  With
    ``on_cancel``, a cancel is handed to it instead (inside the Trio run,
    once per cancel of the caller), and the call's own outcome is returned
    or raised: the Trio code decides where the cancel lands, as
    ``adapters.pocketflow`` does to cancel like asyncio.
    """
    loop = asyncio.get_running_loop()
    host = host_for(loop)
    job = _Job(async_fn, args, loop.create_future(), on_start, on_cancel)
    host.host_submit(job)
    caught: asyncio.CancelledError | None = None
    while True:
        try:
            await job.future
        except asyncio.CancelledError as cancel:
            caught = cancel
            if job.result is None:  # still running: hand the cancel over, wait on
                if on_cancel is None:
                    job.cancel_requested = True  # a job not started yet starts cancelled
                host.run_sync_soon(job.cancel)
                job.future = loop.create_future()
                continue
        if job.result is not None:
            break
    await host.host_wait_closed()
    result = job.result
    if caught is not None and (
        on_cancel is None or (isinstance(result, outcome.Error) and isinstance(result.error, asyncio.CancelledError))
    ):
        raise caught from None
    return result.unwrap()


async def run_flow(flow: trioflow.Node, shared: Any) -> str | None:
    """asyncio-flavored: run a trioflow flow (or node) from asyncio code; return its action.

    The flow runs on Trio as a guest of the calling loop, in a copy of the
    caller's context (its context variables, an ``instrumented`` block around
    the call); its :class:`AsyncioNode` s run their coroutines on that same
    loop.  Cancelling the caller cancels the flow.  The guest run is shared
    by every call from the loop and lasts until ``loop.close()`` (see the
    module docstring): meanwhile, call ``trioflow.run`` from another thread
    if at all.

    Example (a FastAPI-style handler)::

        async def handle(request):
            shared = {"text": await request.text()}
            await adapters.aio.run_flow(summary_flow, shared)
            return shared["summary"]
    """
    if not isinstance(flow, trioflow.Node):
        raise TypeError(f"run_flow needs a trioflow Node or Flow, not {flow!r}")
    return await run_trio(flow.run, shared)  # type: ignore[no-any-return]


# -- asyncio inside Trio ---------------------------------------------------------------


async def call_asyncio(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Trio-flavored: ``await fn(*args)`` for an asyncio coroutine function.

    Runs on the asyncio loop that hosts this Trio run (under :func:`run_flow`),
    else on the current trio-asyncio loop, which must be open, as an asyncio
    task in a copy of the current context.  A Trio cancel cancels the asyncio
    task and waits for it.

    Example::

        async with trio_asyncio.open_loop():
            text = await adapters.aio.call_asyncio(fetch_page, "https://example.com")
    """
    return await _bridge(fn, args, None)


def _bridge(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], context: contextvars.Context | None) -> Any:
    """The Trio-flavored awaitable of :func:`call_asyncio`, with no coroutine of its own
    (the nodes return it from plain methods: one frame less per call on the hot path)."""
    host = _HOST.get()
    if host is not None:
        return host.call(fn, args, context)
    loop = _trio_asyncio().current_loop.get()
    if loop is None:
        raise RuntimeError(
            "asyncio code in a Trio program needs a trio-asyncio loop: run it inside "
            "`async with trio_asyncio.open_loop():`"
        )
    return _wait_aio(_create_task(loop, _guard(fn, *args), context))


def _needs_loop() -> bool:
    return _HOST.get() is None and _trio_asyncio().current_loop.get() is None


# -- streams ---------------------------------------------------------------------------


class _End:
    """What :func:`_next_item` returns at the end of the iterator."""


_END = _End()


async def _next_item(iterator: AsyncIterator[Any]) -> Any:
    """asyncio-flavored: the next item of ``iterator``, or ``_END``."""
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


class AsyncioIterator(Generic[T]):
    """A Trio-flavored async iterator over an asyncio async iterator; see :func:`iterate_asyncio`."""

    def __init__(self, iterable: AsyncIterable[T]) -> None:
        self._iterator: AsyncIterator[T] = aiter(iterable)
        # One context for every step, as when one asyncio task iterates it.
        self._context = contextvars.copy_context()
        self._closed = False

    def __aiter__(self) -> AsyncioIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        item = await _bridge(_next_item, (self._iterator,), self._context)
        if item is _END:
            self._closed = True
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Close the asyncio iterator, on the asyncio side (its ``aclose()``, if it has one).

        Shielded from cancellation, as cleanup should be: the iterator's
        ``finally`` blocks run even when the Trio code around is cancelled.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True):
            await _bridge(aclose, (), self._context)

    async def __aenter__(self) -> AsyncioIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def iterate_asyncio(iterable: AsyncIterable[T]) -> AsyncioIterator[T]:
    """Trio-flavored: consume an asyncio async iterator (an async generator) from Trio code.

    Each step (``__anext__``) runs on the same asyncio loop as
    :func:`call_asyncio` would use, as an asyncio task, all in one context.
    Cancellation crosses both ways: a Trio cancel while waiting for the next
    item cancels that asyncio step (the generator sees ``CancelledError`` at
    its ``await`` and its ``finally`` blocks run before ``trio.Cancelled``
    comes out); a ``CancelledError`` raised by the asyncio side comes out as
    it is.  Use it as an ``async with`` block, so that leaving early
    (``break``, an error, a cancel) closes the asyncio generator on the
    asyncio side at once, not at garbage collection.

    Example (a streaming LLM client written for asyncio)::

        async def stream_completion(prompt):  # asyncio code
            async with client.stream("POST", "/v1/chat", json={"prompt": prompt}) as response:
                async for line in response.aiter_lines():
                    yield line

        class Answer(trioflow.Node):
            async def exec(self, prompt):
                chunks = []
                async with adapters.aio.iterate_asyncio(stream_completion(prompt)) as stream:
                    async for chunk in stream:
                        chunks.append(chunk)
                        if chunk == "[DONE]":
                            break  # the asyncio generator is closed right here
                return "".join(chunks)
    """
    return AsyncioIterator(iterable)


# -- AsyncioNode -----------------------------------------------------------------------


@attrs.define(slots=True)
class _NodeRun:
    """One run of an :class:`AsyncioNode`: the wrapped node's copy and the context its coroutines share."""

    target: Any
    context: contextvars.Context


_RUN: contextvars.ContextVar[_NodeRun] = contextvars.ContextVar("trioflow_asyncio_node_run")
# The context of the parallel item running in this (worker) task, shared by its attempts.
_ITEM_CONTEXT: contextvars.ContextVar[contextvars.Context | None] = contextvars.ContextVar(
    "trioflow_asyncio_item_context", default=None
)

_PARALLEL = "AsyncParallelBatchNode"
_BATCH = "AsyncBatchNode"


def _kind(node: Any) -> type[AsyncioNode]:
    names = {klass.__name__ for klass in type(node).__mro__}
    if _PARALLEL in names:
        return AsyncioParallelBatchNode
    if _BATCH in names:
        return AsyncioBatchNode
    return AsyncioNode


N = TypeVar("N", bound="AsyncioNode")


@attrs.define(slots=False, eq=False, kw_only=True, init=False)
class AsyncioNode(trioflow.Node):
    """A trioflow node that runs an asyncio node's coroutines.

    ``AsyncioNode(node)`` wraps any object with coroutine methods
    ``prep_async(shared)``, ``exec_async(prep_res)`` and
    ``post_async(shared, prep_res, exec_res)`` (and optionally
    ``exec_fallback_async(prep_res, exc)``), such as a PocketFlow
    ``AsyncNode``.  The node's ``max_retries`` and ``wait`` become the
    wrapper's retry policy; other trioflow options (``timeout``, ``backoff``,
    ...) may be passed as keywords.  Each run works on a copy of the wrapped
    node with the flow's params (``set_params``), as PocketFlow does, and its
    coroutines share one context (a variable set in ``prep_async`` is seen
    in ``exec_async`` and ``post_async``).

    Batch kinds: a PocketFlow ``AsyncBatchNode`` / ``AsyncParallelBatchNode``
    keeps its meaning: ``AsyncioNode(node)`` then returns an
    :class:`AsyncioBatchNode` / :class:`AsyncioParallelBatchNode`, whose items
    go through trioflow's worker pool; ``max_concurrency`` and ``limiter`` cap
    the parallel kind.  For any other object the kind cannot be told from its
    class: choose it by constructing the kind itself,
    ``AsyncioParallelBatchNode(obj, max_concurrency=32)`` (``prep_async``
    returns the items, ``exec_async`` runs once per item) or
    ``AsyncioBatchNode(obj)`` (items one after another).

    The coroutines run on the asyncio loop that hosts the Trio run
    (:func:`run_flow`), else on the caller's trio-asyncio loop, else on one the
    node opens for its run (then loop-bound objects cannot be shared between
    nodes: open ``trio_asyncio.open_loop()`` around the flow for that).
    Either way a ``BaseException`` from the asyncio code (``CancelledError``,
    ``KeyboardInterrupt``) comes out of ``run`` bare.

    Example::

        class Fetch(pocketflow.AsyncNode):
            async def exec_async(self, url):
                async with session.get(url) as response:
                    return await response.text()

        fetch = adapters.aio.AsyncioNode(Fetch(max_retries=3, wait=1))
        flow = trioflow.Flow(start=load >> fetch >> summarize)
        async with trio_asyncio.open_loop():
            await flow.run(shared)
    """

    node: Any = None

    def __new__(cls: type[N], node: Any = None, *args: Any, **kwargs: Any) -> N:
        if cls is AsyncioNode and node is not None:
            cls = _kind(node)  # type: ignore[assignment]
        return object.__new__(cls)

    def __init__(
        self,
        node: Any,
        *,
        max_concurrency: int | None = None,
        limiter: trio.CapacityLimiter | None = None,
        **options: Any,
    ) -> None:
        for name in ("prep_async", "exec_async", "post_async"):
            if not callable(getattr(node, name, None)):
                raise TypeError(f"AsyncioNode needs an asyncio node with a coroutine method {name}, not {node!r}")
        if hasattr(node, "_orch_async"):
            raise TypeError(f"AsyncioNode wraps asyncio nodes, not flows ({type(node).__name__}): wrap its nodes")
        retries = getattr(node, "max_retries", 1)
        options.setdefault("max_retries", max(retries, 1) if isinstance(retries, int) else retries)
        options.setdefault("wait", getattr(node, "wait", 0.0))
        if isinstance(self, AsyncioParallelBatchNode):
            options.update(max_concurrency=max_concurrency, limiter=limiter)
        elif max_concurrency is not None or limiter is not None:
            kind = type(node).__name__
            raise ValueError(
                f"{type(self).__name__}({kind}): max_concurrency and limiter cap a parallel batch, and {kind} "
                "is not a PocketFlow AsyncParallelBatchNode, so its batch kind cannot be inferred: wrap it as "
                f"adapters.aio.AsyncioParallelBatchNode({kind}(...), max_concurrency=...) to run exec_async "
                "once per item of prep_async's result"
            )
        self.__attrs_init__(node=node, **options)
        self._skip_exec = retries == 0  # PocketFlow: max_retries=0 never calls exec_async

    # The wrapped node's methods, one crossing each, in the context of this run.
    # Plain methods returning the bridge's awaitable (trioflow awaits it): one
    # coroutine frame less per crossing than ``async def ... await``.

    def prep(self, shared: Any) -> Awaitable[Any]:
        run = _RUN.get()
        return _bridge(run.target.prep_async, (shared,), run.context)  # type: ignore[no-any-return]

    def exec(self, prep_res: Any) -> Awaitable[Any] | None:
        if self._skip_exec:
            return None
        run = _RUN.get()
        return _bridge(run.target.exec_async, (prep_res,), self._exec_context(run))  # type: ignore[no-any-return]

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Awaitable[Any]:
        run = _RUN.get()
        fallback = getattr(run.target, "exec_fallback_async", None)
        if fallback is None:
            raise exc
        return _bridge(fallback, (prep_res, exc), self._exec_context(run, first=False))  # type: ignore[no-any-return]

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Awaitable[Any]:
        run = _RUN.get()
        return _bridge(run.target.post_async, (shared, prep_res, exec_res), run.context)  # type: ignore[no-any-return]

    def _exec_context(self, run: _NodeRun, first: bool = True) -> contextvars.Context:
        """The context of an ``exec_async`` (``first``: an item's first attempt) or ``exec_fallback_async``."""
        return run.context

    async def _run(self, shared: Any) -> str | None:
        # This run's copy of the wrapped node, with this step's params, lives in
        # a context variable (so one wrapper can run many times at once, and
        # the events of the run name this very node).
        target = copy.copy(self.node)
        set_params = getattr(target, "set_params", None)
        if set_params is not None:
            set_params(self.params)
        token = _RUN.set(_NodeRun(target, contextvars.copy_context()))
        try:
            if not _needs_loop():
                return await trioflow.Node._run(self, shared)
            # The loop's nurseries would wrap anything the node raises (twice):
            # capture it inside, raise it bare once the loop is closed.
            async with _trio_asyncio().open_loop():
                result = await outcome.acapture(trioflow.Node._run, self, shared)
            return result.unwrap()
        finally:
            _RUN.reset(token)


@attrs.define(slots=False, eq=False, kw_only=True, init=False)
class AsyncioBatchNode(AsyncioNode, trioflow.BatchNode):
    """An asyncio batch node: ``exec_async`` once per item of ``prep_async``'s result, in order.

    ``AsyncioNode(node)`` builds one for a PocketFlow ``AsyncBatchNode``; build
    it directly, ``AsyncioBatchNode(obj)``, for any other object whose
    ``prep_async`` returns the items.
    """


@attrs.define(slots=False, eq=False, kw_only=True, init=False)
class AsyncioParallelBatchNode(AsyncioNode, trioflow.ParallelBatchNode):
    """An asyncio parallel batch node: items in trioflow's bounded pool, results in order.

    ``AsyncioNode(node, max_concurrency=8)`` builds one for a PocketFlow
    ``AsyncParallelBatchNode``; build it directly for any other object whose
    ``prep_async`` returns the items and whose ``exec_async`` handles one::

        class Embed:  # not a PocketFlow class
            async def prep_async(self, shared):
                return shared["texts"]

            async def exec_async(self, text):
                return await client.embed(text)

            async def post_async(self, shared, prep_res, exec_res):
                shared["vectors"] = exec_res

        embed = adapters.aio.AsyncioParallelBatchNode(Embed(), max_concurrency=32)

    Each item's ``exec_async`` starts from a copy of the run's context (as
    ``asyncio.gather`` gives each of its tasks), kept across the item's retries.
    """

    def _exec_context(self, run: _NodeRun, first: bool = True) -> contextvars.Context:
        context = None if first and not self.cur_retry else _ITEM_CONTEXT.get()
        if context is None:
            context = run.context.copy()
            _ITEM_CONTEXT.set(context)  # in this worker task, for the item's next attempts and fallback
        return context
