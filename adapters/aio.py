"""Bridges between trioflow and asyncio: asyncio nodes in Trio flows, Trio flows under asyncio.

Two directions, each crossing spelled out:

* **asyncio inside Trio.** :class:`AsyncioNode` wraps an asyncio node (any
  object with coroutine methods ``prep_async`` / ``exec_async`` / ``post_async``,
  such as PocketFlow's ``AsyncNode`` and its batch kinds) so it wires into a
  trioflow flow with ``>>`` like any node.  Its coroutines run on an asyncio
  loop: the caller's ``trio_asyncio`` loop (``trio_asyncio.aio_as_trio``), one
  the node opens for its run when there is none, or, under :func:`run_flow`,
  the very asyncio loop that called the flow.

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
one guest run (:class:`_GuestHost`), started on the first call and ended when
the last call returns.  One case is different: once ``trio_asyncio`` is
imported, ``asyncio.run`` itself builds trio-asyncio loops, which already run
on Trio; there the call runs as a task of that Trio run (:class:`_TrioAsyncioHost`).
This module imports ``trio_asyncio`` only when an :class:`AsyncioNode` needs it,
so a program that only uses :func:`run_flow` keeps asyncio's own loops.

Cancellation crosses both ways: a Trio cancel (``move_on_after``, a failing
sibling) cancels the asyncio task underneath and waits until its ``finally``
blocks and ``async with`` exits have run; an asyncio cancel of ``run_flow``
cancels the flow and waits for it to unwind before ``CancelledError`` is
raised.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import sys
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import attrs
import outcome
import trio

import trioflow

__all__ = [
    "AsyncioBatchNode",
    "AsyncioNode",
    "AsyncioParallelBatchNode",
    "call_asyncio",
    "run_flow",
    "run_trio",
]


# -- Trio as a guest of an asyncio loop ------------------------------------------


class _Job:
    """One ``run_trio`` call: a Trio function, its asyncio future, its cancel scope."""

    __slots__ = ("args", "async_fn", "cancel_requested", "future", "on_start", "scope")

    def __init__(
        self,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        future: asyncio.Future[outcome.Outcome[Any]],
        on_start: Callable[[], None] | None,
    ) -> None:
        self.async_fn = async_fn
        self.args = args
        self.future = future
        self.on_start = on_start
        self.scope: trio.CancelScope | None = None
        self.cancel_requested = False

    def cancel(self) -> None:
        """Trio-flavored (runs in the Trio run): cancel the job, now or as soon as it starts."""
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()


class _Host:
    """The Trio run that serves the Trio calls made from one asyncio loop.

    ``host_*`` methods are asyncio-flavored (called from the loop's
    callbacks and coroutines), the others Trio-flavored.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.token: trio.lowlevel.TrioToken | None = None
        self.extras: dict[str, Any] = {}  # per-run state of other adapters (the PocketFlow baton)

    def host_submit(self, job: _Job) -> None:
        raise NotImplementedError

    async def host_wait_closed(self) -> None:
        """Wait until the Trio run is gone if it is ending (guest runs only)."""

    def run_sync_soon(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` inside the Trio run, soon, in FIFO order; callable from either side."""
        assert self.token is not None
        self.token.run_sync_soon(fn)

    async def _run_job(self, job: _Job) -> None:
        result: outcome.Outcome[Any] = outcome.Value(None)
        token = _HOST.set(self)
        try:
            with trio.CancelScope() as scope:
                job.scope = scope
                if job.cancel_requested:
                    scope.cancel()
                result = await outcome.acapture(job.async_fn, *job.args)
            if scope.cancelled_caught:
                result = outcome.Error(asyncio.CancelledError())
        finally:
            _HOST.reset(token)
            self._job_done()
            if not job.future.done():
                job.future.set_result(result)

    def _job_done(self) -> None:
        pass

    def create_task(
        self,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        """Start ``fn(*args)`` as an asyncio task on the loop (from the Trio side)."""
        if context is None:  # create_task takes ``context`` from Python 3.11 on
            return self.loop.create_task(fn(*args))
        return self.loop.create_task(fn(*args), context=context)

    async def wait(self, task: asyncio.Future[Any]) -> Any:
        """Trio-flavored: wait for an asyncio task of the loop; a Trio cancel cancels it and waits on."""
        raise NotImplementedError

    async def call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Trio-flavored: ``await fn(*args)`` as an asyncio task on the loop.

        A Trio cancel cancels the asyncio task and keeps waiting until it is
        done, so its ``finally`` blocks have run when ``trio.Cancelled`` comes out.
        """
        return await self.wait(self.create_task(fn, *args))


class _GuestHost(_Host):
    """A Trio guest run on a plain asyncio loop, shared by all calls from that loop.

    Trio allows one run per thread, so the calls share it: it starts with the
    first job and ends when no job is left; a job submitted while it is ending
    starts the next run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.state = "idle"  # idle -> running -> closing -> idle
        self.jobs = 0
        self.pending: list[_Job] = []
        self._nursery: trio.Nursery | None = None
        self.finished: asyncio.Future[None] | None = None

    def host_submit(self, job: _Job) -> None:
        self.pending.append(job)
        if self.state == "idle":
            self.state = "running"
            self.jobs = 0
            self.finished = self.loop.create_future()
            trio.lowlevel.start_guest_run(
                self._main,
                run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=self.loop.call_soon,
                done_callback=self._host_done,
                host_uses_signal_set_wakeup_fd=True,
                strict_exception_groups=True,
            )
        elif self.state == "running" and self.token is not None:
            self.token.run_sync_soon(self._drain)
        # "running" before the token exists, or "closing": _main / the next run drains it.

    def run_sync_soon(self, fn: Callable[[], Any]) -> None:
        if self.token is None:  # the run is starting: _main drains these first
            self.extras.setdefault("_early", []).append(fn)
        else:
            self.token.run_sync_soon(fn)

    async def host_wait_closed(self) -> None:
        """Wait until a run that is ending has ended, so the loop may close right after."""
        if self.state == "closing" and self.finished is not None:
            await asyncio.shield(self.finished)

    def _host_done(self, result: outcome.Outcome[None]) -> None:
        self.state = "idle"
        self.token = None
        self._nursery = None
        self.extras.clear()
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)
        if isinstance(result, outcome.Error):  # pragma: no cover - _run_job captures every outcome
            for job in self.pending:
                if not job.future.done():
                    job.future.set_result(result)
            self.pending.clear()
            return
        if self.pending:
            pending, self.pending = self.pending, []
            for job in pending:
                self.host_submit(job)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for fn in self.extras.pop("_early", ()):
                fn()
            self._drain()

    def _drain(self) -> None:
        if self.state != "running" or self._nursery is None:
            return
        jobs, self.pending = self.pending, []
        for job in jobs:
            self.jobs += 1
            if job.on_start is not None:
                job.on_start()
            self._nursery.start_soon(self._run_job, job)

    def _job_done(self) -> None:
        self.jobs -= 1
        if self.jobs == 0 and not self.pending:
            self.state = "closing"

    async def wait(self, task: asyncio.Future[Any]) -> Any:
        # Like trio_asyncio.run_aio_future, but the wake-up goes through
        # run_sync_soon: the task completes in a host callback, between ticks.
        token = self.token
        assert token is not None
        trio_task = trio.lowlevel.current_task()
        raise_cancel: Callable[[], Any] | None = None

        def done(_: asyncio.Future[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, trio_task, outcome.capture(task.result))

        task.add_done_callback(done)

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
        self.aio_loop: Any = loop
        self.token = trio.lowlevel.current_trio_token()

    def host_submit(self, job: _Job) -> None:
        token = trio.lowlevel.current_trio_token()
        if token is not self.token:  # the loop runs under a new Trio run: start afresh
            self.token = token
            self.extras.clear()
        if job.on_start is not None:
            job.on_start()
        self.aio_loop.trio_as_future(self._run_job, job)

    async def wait(self, task: asyncio.Future[Any]) -> Any:
        return await _trio_asyncio().run_aio_future(task)


def _trio_asyncio() -> Any:
    """trio_asyncio, imported on first use: importing it makes ``asyncio.run`` and
    ``asyncio.new_event_loop`` build trio-asyncio loops process-wide, which a
    program that only uses :func:`run_flow` or ``adapters.pocketflow`` should not get."""
    module = sys.modules.get("trio_asyncio")
    if module is None:
        import trio_asyncio

        module = trio_asyncio
    return module


def _on_trio_asyncio(loop: asyncio.AbstractEventLoop) -> bool:
    module = sys.modules.get("trio_asyncio")
    return module is not None and isinstance(loop, module.BaseTrioEventLoop)


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
    async_fn: Callable[..., Awaitable[Any]], *args: Any, on_start: Callable[[], None] | None = None
) -> Any:
    """asyncio-flavored: run the Trio function ``await async_fn(*args)`` from asyncio code.

    On a plain asyncio loop it runs in the loop's Trio guest run (started if
    needed); on a trio-asyncio loop, in the Trio run underneath.  Cancelling
    the awaiting asyncio task cancels the Trio call and waits until it has
    unwound; then ``asyncio.CancelledError`` is raised.  ``on_start`` is
    called inside the Trio run, in submission order, just before the call's
    task is started.
    """
    loop = asyncio.get_running_loop()
    host = host_for(loop)
    future: asyncio.Future[outcome.Outcome[Any]] = loop.create_future()
    job = _Job(async_fn, args, future, on_start)
    host.host_submit(job)
    try:
        result = await asyncio.shield(future)
    except asyncio.CancelledError:
        job.cancel_requested = True  # a job not started yet starts cancelled
        if job.scope is not None and not future.done():
            host.run_sync_soon(job.cancel)
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
        await host.host_wait_closed()
        raise
    await host.host_wait_closed()
    return result.unwrap()


async def run_flow(flow: trioflow.Node, shared: Any) -> str | None:
    """asyncio-flavored: run a trioflow flow (or node) from asyncio code; return its action.

    Example (a FastAPI-style handler)::

        async def handle(request):
            shared = {"text": await request.text()}
            await adapters.aio.run_flow(summary_flow, shared)
            return shared["summary"]

    The flow runs on Trio as a guest of the calling loop; its
    :class:`AsyncioNode` s run their coroutines on that same loop.
    Cancelling the caller cancels the flow.
    """
    if not isinstance(flow, trioflow.Node):
        raise TypeError(f"run_flow needs a trioflow Node or Flow, not {flow!r}")
    return await run_trio(flow.run, shared)  # type: ignore[no-any-return]


# -- asyncio inside Trio ---------------------------------------------------------------


async def call_asyncio(fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Trio-flavored: ``await fn(*args)`` for an asyncio coroutine function.

    Runs on the asyncio loop that hosts this Trio run (under :func:`run_flow`),
    else on the current trio-asyncio loop (``trio_asyncio.aio_as_trio``), which
    must be open.  A Trio cancel cancels the asyncio task and waits for it.
    """
    return await _bridge(fn, *args)


def _bridge(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """The Trio-flavored awaitable of :func:`call_asyncio`, with no coroutine of its own
    (the nodes return it from plain methods: one frame less per call on the hot path)."""
    host = _HOST.get()
    if host is not None:
        return host.call(fn, *args)
    loop = _trio_asyncio().current_loop.get()
    if loop is None:
        raise RuntimeError("call_asyncio needs a trio-asyncio loop: run it inside trio_asyncio.open_loop()")
    # What aio_as_trio(fn)(*args) does, minus a wrapper object and a coroutine
    # per call: calling an async def only creates its coroutine, nothing runs.
    awaitable = fn(*args)
    if not asyncio.iscoroutine(awaitable):
        awaitable = _await(awaitable)
    return loop.run_aio_coroutine(awaitable)  # type: ignore[no-any-return]


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _needs_loop() -> bool:
    return _HOST.get() is None and _trio_asyncio().current_loop.get() is None


_PARALLEL = "AsyncParallelBatchNode"
_BATCH = "AsyncBatchNode"


def _kind(node: Any) -> type[AsyncioNode]:
    names = {klass.__name__ for klass in type(node).__mro__}
    if _PARALLEL in names:
        return AsyncioParallelBatchNode
    if _BATCH in names:
        return AsyncioBatchNode
    return AsyncioNode


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
    node with the flow's params (``set_params``), as PocketFlow does.

    A PocketFlow ``AsyncBatchNode`` / ``AsyncParallelBatchNode`` keeps its
    meaning: ``AsyncioNode(node)`` then returns an :class:`AsyncioBatchNode` /
    :class:`AsyncioParallelBatchNode`, whose items go through trioflow's
    worker pool; ``max_concurrency`` and ``limiter`` cap the parallel kind.

    The coroutines run on the asyncio loop that hosts the Trio run
    (:func:`run_flow`), else on the caller's trio-asyncio loop, else on one the
    node opens for its run (then loop-bound objects cannot be shared between
    nodes: open ``trio_asyncio.open_loop()`` around the flow for that).

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
    _target: Any = attrs.field(default=None, init=False, repr=False)  # this run's copy of ``node``

    def __new__(cls, node: Any = None, *args: Any, **kwargs: Any) -> AsyncioNode:
        if cls is AsyncioNode and node is not None:
            cls = _kind(node)
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
            raise ValueError(
                f"AsyncioNode({type(node).__name__}): max_concurrency and limiter apply to a wrapped "
                "AsyncParallelBatchNode only"
            )
        self.__attrs_init__(node=node, **options)
        self._skip_exec = retries == 0  # PocketFlow: max_retries=0 never calls exec_async

    # The wrapped node's methods, one crossing each.

    # Plain methods returning the bridge's awaitable (trioflow awaits it): one
    # coroutine frame less per crossing than ``async def ... await``.

    def prep(self, shared: Any) -> Awaitable[Any]:
        return _bridge(self._target.prep_async, shared)

    def exec(self, prep_res: Any) -> Awaitable[Any] | None:
        if self._skip_exec:
            return None
        return _bridge(self._target.exec_async, prep_res)

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Awaitable[Any]:
        fallback = getattr(self._target, "exec_fallback_async", None)
        if fallback is None:
            raise exc
        return _bridge(fallback, prep_res, exc)

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Awaitable[Any]:
        return _bridge(self._target.post_async, shared, prep_res, exec_res)

    async def _run(self, shared: Any) -> str | None:
        # A private copy per run (so one wrapper can run many times at once),
        # holding a copy of the wrapped node with this step's params.
        run = copy.copy(self)
        run._target = copy.copy(self.node)
        set_params = getattr(run._target, "set_params", None)
        if set_params is not None:
            set_params(self.params)
        if not _needs_loop():
            return await trioflow.Node._run(run, shared)
        # The loop's nursery would wrap an error in an ExceptionGroup: carry it out bare.
        error: Exception | None = None
        async with _trio_asyncio().open_loop():
            try:
                action = await trioflow.Node._run(run, shared)
            except Exception as exc:
                error = exc
        if error is not None:
            raise error
        return action


@attrs.define(slots=False, eq=False, kw_only=True, init=False)
class AsyncioBatchNode(AsyncioNode, trioflow.BatchNode):
    """A wrapped PocketFlow ``AsyncBatchNode``: ``exec_async`` once per item, in order."""


@attrs.define(slots=False, eq=False, kw_only=True, init=False)
class AsyncioParallelBatchNode(AsyncioNode, trioflow.ParallelBatchNode):
    """A wrapped PocketFlow ``AsyncParallelBatchNode``: items in trioflow's bounded pool, results in order."""
