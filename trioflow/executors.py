"""Where a node's plain ``def exec`` runs: inline, in threads, in processes, on a Dask cluster.

An executor moves ``exec`` and nothing else.  ``prep``, ``post``,
``exec_fallback``, the retry policy, the per-attempt ``timeout``, the
admission (caps, limiter, rate, Throttle) and the recording of results all
stay in the Trio task; only the call ``exec(item)`` of each attempt goes to a
thread, a worker process or a Dask worker, and its result (or exception)
comes back to the task, which goes on as if ``exec`` had run inline::

    class Resize(trioflow.ParallelBatchNode):
        def exec(self, path):                  # plain def: CPU work
            return thumbnail(path)

    Resize(max_concurrency=8, executor=trioflow.executors.Processes())

============================  =========================================================
``Inline()``                  the default: ``exec`` runs in the Trio task (so it must not block)
``Threads(max_workers)``      ``trio.to_thread``: blocking SDKs (``requests``, boto3, a sync LLM client)
``Processes(max_workers)``    trio-parallel worker processes: CPU-bound work (the ``processes`` extra)
``Dask(client)``              a Dask cluster (the ``dask`` extra)
============================  =========================================================

One executor instance may be shared by several nodes (one thread budget, one
process pool, one cluster): its ``max_workers`` bounds them together.  With no
``max_concurrency`` a parallel batch takes the executor's size as its cap
(:meth:`Threads.default_max_concurrency`), so a long lazy input is still
pulled only as workers free up.

Shipping.  A process or Dask worker runs ``exec`` on a pickled copy of the
node (cloudpickle when it is installed, as trio-parallel and Dask use), taken
once per batch: a node that cannot be pickled is a ``TypeError`` naming the
node before any item starts.  The copy leaves behind what belongs to the run
(its successors, executor, Throttle and limiter).  Each item is pickled when
its attempt is sent.  ``self.cur_retry`` inside a remote ``exec`` is the
attempt's number, as inline.

Cancellation.  A timeout or a cancel from outside reaches the work: a worker
process is killed (``kill_on_cancel=True``); a Dask future is cancelled on the
scheduler and released.  A thread cannot be interrupted: its result is
dropped when it comes (the thread still holds its place in ``max_workers``
until then).  A worker that dies under an attempt (killed by the OS, a
crash in C code, a lost machine) is a :class:`WorkerDiedError`, which the
retry policy retries like any other failure.

The protocol the engine calls (a custom executor implements it):

- ``inline``: bool; only an inline executor may run an ``async def exec``;
- ``bind(owner, fn)``: called once per batch, in the Trio task, with the
  node's class name and the bound ``exec`` (or a ``parallel_map`` function);
  returns ``None`` (run ``fn`` inline) or an async function of one item that
  runs ``fn(item)`` elsewhere.  Checks done once per batch belong here;
- ``default_max_concurrency()`` (optional): the cap a parallel batch takes when it has none
  (None, or no such method: no cap).
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import os
import pickle
import signal
import sys
import types
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError as FutureCancelled
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import outcome
import trio

from ._item import attempt_var

__all__ = ["Dask", "Executor", "Inline", "Processes", "Threads", "WorkerDiedError"]

#: ``Threads()``'s size when none is given: trio's own default thread limit.
DEFAULT_THREADS = 40


class WorkerDiedError(Exception):
    """The worker that ran an attempt of ``exec`` died before it answered.

    A worker process killed by the OS (out of memory, a signal), a crash in
    C code, a Dask worker lost with its machine (Dask's ``KilledWorker``),
    or a Dask future cancelled on the cluster by someone else.  The attempt
    is a failure like any other: the node's retry policy tries it again (on
    a fresh worker), then ``exec_fallback`` decides.  The original error is
    its ``__cause__``.

    From :class:`Processes`, a worker that exited (rather than being killed
    by a signal) carries a note about the ``if __name__ == "__main__":``
    guard: without it, every spawned worker re-runs the script, starts the
    run again and dies (exit code 1).  The note says so plainly when the
    main script is seen to start the run outside the guard, and names it
    only as a common cause otherwise.

    Example::

        try:
            trioflow.run(flow, shared)
        except* trioflow.WorkerDiedError as group:
            print(group.exceptions[0])  # Resize: a worker process died (exit code 1) while running exec
    """


@runtime_checkable
class Executor(Protocol):
    """What the engine asks of an executor (see the module docstring)."""

    inline: bool

    def bind(self, owner: str, fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]] | None:
        """The runner of ``fn`` for one batch of ``owner``'s items, or None to run it inline."""
        ...

    def default_max_concurrency(self) -> int | None:
        """The cap of a parallel batch that sets none (None: no cap)."""
        ...


def _check_workers(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{type(instance).__name__}: max_workers must be an int >= 1 or None, not {value!r}")


def _require(module: str, package: str, extra: str, who: str) -> Any:
    """Import an optional dependency, or say which extra installs it and how."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{who} needs the {package!r} package, which trioflow's {extra!r} extra installs: "
            f"pip install 'trioflow[{extra}]' (or, in a clone of the repository: pip install -e '.[{extra}]')",
            name=module,
        ) from exc


# -- shipping: a pickled copy of the node, and each item ----------------------------


def _dumps(obj: Any) -> bytes:
    """Pickle for a worker: with cloudpickle (by value where plain pickle refuses) when installed."""
    try:
        import cloudpickle
    except ModuleNotFoundError:  # pragma: no cover - the processes and dask extras install it
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


#: What a shipped copy of a node leaves behind: the run's, not ``exec``'s (and rarely picklable).
_LEFT_BEHIND: dict[str, Callable[[], Any]] = {
    "successors": dict,
    "executor": lambda: None,
    "throttle": lambda: None,
    "limiter": lambda: None,
}


def _shipping_hint() -> str:
    hint = (
        "A Processes or Dask executor runs exec on a pickled copy of the node, so the node, its attributes "
        "and its class must pickle: a lock, an open file or socket, a client or connection object, or a "
        "generator cannot be sent to a worker (create it inside exec, or keep it in a module-level cache)"
    )
    if importlib.util.find_spec("cloudpickle") is None:  # pragma: no cover - the extras install it
        hint += "; without cloudpickle installed, a local class or lambda cannot be sent to a worker either"
    return hint


def _detached(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` as it is shipped: a node's bound ``exec`` on a copy without the run's parts."""
    from ._node import Node

    node = getattr(fn, "__self__", None)
    func = getattr(fn, "__func__", None)
    if not isinstance(node, Node) or func is None:
        return fn
    clone = copy.copy(node)
    for name, empty in _LEFT_BEHIND.items():
        if hasattr(clone, name):
            object.__setattr__(clone, name, empty())
    return types.MethodType(func, clone)


def ship(owner: str, fn: Callable[[Any], Any]) -> bytes:
    """``fn`` (a node's ``exec``) pickled for a worker, once per batch; a clear error if it cannot be.

    Raises:
        TypeError: naming ``owner``, with what could not be pickled.
    """
    try:
        return _dumps(_detached(fn))
    except Exception as exc:
        raise TypeError(
            f"{owner}: exec cannot be sent to a worker ({type(exc).__name__}: {exc}). {_shipping_hint()}"
        ) from exc


def pack(owner: str, item: Any, attempt: int) -> bytes:
    """One attempt's item and number, pickled for a worker; a clear error if the item cannot be."""
    try:
        return _dumps((item, attempt))
    except Exception as exc:
        raise TypeError(
            f"{owner}: an item cannot be sent to a worker ({type(exc).__name__}: {exc}); the items of a node "
            "with a Processes or Dask executor are pickled: pass plain data (numbers, strings, bytes, "
            "lists, dicts, arrays) and open files or connections inside exec"
        ) from exc


def run_shipped(fn: bytes, job: bytes) -> Any:
    """In the worker: unpickle ``exec`` and the item, run the attempt with its number as ``cur_retry``."""
    call = pickle.loads(fn)
    item, attempt = pickle.loads(job)
    token = attempt_var.set(attempt)
    try:
        return call(item)
    finally:
        attempt_var.reset(token)


# -- the executors ------------------------------------------------------------------


@attrs.define(eq=False, frozen=True)
class Inline:
    """The default: ``exec`` runs in the Trio task, as if no executor were given.

    A plain ``def exec`` then must not block: the engine yields to Trio after
    each call, but during the call nothing else of the run moves.

    Example::

        Summarize(executor=trioflow.executors.Inline())  # the same as no executor
    """

    inline = True

    def bind(self, owner: str, fn: Callable[[Any], Any]) -> None:
        """Nothing to bind: the engine calls ``fn`` itself."""
        return None

    def default_max_concurrency(self) -> None:
        """No cap of its own."""
        return None


def _per_run_limiter(runvar: trio.lowlevel.RunVar[trio.CapacityLimiter], total: int) -> trio.CapacityLimiter:
    """The executor's limiter in this Trio run (made on first use).

    One per run, not one per executor object: a thread abandoned by a cancel
    keeps its token until it ends, and a run that is over cannot give it back.
    """
    try:
        return runvar.get()
    except LookupError:
        limiter = trio.CapacityLimiter(total)
        runvar.set(limiter)
        return limiter


@attrs.define(eq=False, frozen=True)
class Threads:
    """Run ``exec`` in worker threads (``trio.to_thread.run_sync``): for blocking calls.

    For a synchronous SDK (``requests``, boto3, a sync OpenAI client, a
    database driver): each attempt's ``exec(item)`` runs in a thread while the
    Trio task waits, so the batch's other items (and the rest of the run) go
    on.  CPU-bound pure-Python work gains nothing here (the GIL): use
    :class:`Processes`.

    Args:
        max_workers: the most threads running ``exec`` at once, across every
            node that shares this executor (default 40, trio's own default).
            A parallel batch with no ``max_concurrency`` takes it as its cap.

    On cancel (a ``timeout``, a fail-fast sibling, an outer cancel) the Trio
    task leaves at once, but a thread cannot be interrupted: the call runs to
    its end in the background, its result is dropped, and the thread keeps
    its place in ``max_workers`` until then.  Give the blocking call its own
    timeout (most SDKs take one) so an abandoned thread does not linger.
    ``self.cur_retry`` works in the thread (the context is copied to it).

    Example::

        class Fetch(trioflow.ParallelBatchNode):
            def exec(self, url):
                return requests.get(url, timeout=10).text   # blocking

        Fetch(max_concurrency=20, executor=trioflow.executors.Threads(max_workers=20))
    """

    max_workers: int | None = attrs.field(default=None, validator=_check_workers)
    _limiters: trio.lowlevel.RunVar[trio.CapacityLimiter] = attrs.field(
        init=False, repr=False, factory=lambda: trio.lowlevel.RunVar("trioflow.executors.Threads")
    )

    inline = False

    @property
    def size(self) -> int:
        """The most threads at once (``max_workers``, or its default)."""
        return DEFAULT_THREADS if self.max_workers is None else self.max_workers

    def default_max_concurrency(self) -> int:
        """A batch with no cap runs at most ``max_workers`` items at once (more would only wait)."""
        return self.size

    def bind(self, owner: str, fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
        """``fn`` in a thread of this run's pool of ``max_workers``."""
        limiter = _per_run_limiter(self._limiters, self.size)
        run_sync = trio.to_thread.run_sync

        async def in_thread(item: Any) -> Any:
            return await run_sync(fn, item, limiter=limiter, abandon_on_cancel=True)

        return in_thread


@attrs.define(eq=False, frozen=True)
class Processes:
    """Run ``exec`` in worker processes (trio-parallel): for CPU-bound work.

    Each attempt's ``exec(item)`` runs in a separate Python process, so CPU
    work uses every core while the Trio run stays responsive.  Workers are
    started on demand and kept for the next items (trio-parallel's cache).
    Needs the ``processes`` extra (trio-parallel, cloudpickle).

    Args:
        max_workers: the most processes running ``exec`` at once, across
            every node that shares this executor (default: the number of
            CPUs).  A parallel batch with no ``max_concurrency`` takes it as its cap.
        kill_on_cancel: on a timeout or a cancel, kill the worker process
            (the default), so the work really stops; False lets the attempt
            finish first (its result dropped), for work that must not be cut
            short (trio-parallel's ``kill_on_cancel``).

    ``exec`` runs on a pickled copy of the node and each item is pickled (see
    the module docstring): a node or item that cannot be is a ``TypeError``
    naming the node.  A worker that dies under an attempt (killed by the OS,
    a segfault) is a :class:`WorkerDiedError`, retried by the node's policy.
    As with any ``multiprocessing`` code, a script that runs a batch must
    keep its top level under ``if __name__ == "__main__":`` (the workers
    import the main module).  Without it, a worker re-running the script
    stops at the batch with a ``RuntimeError`` that says so, and the run in
    the main process fails with a :class:`WorkerDiedError` (exit code 1)
    whose note names the script's line outside the guard.

    Example::

        class Blur(trioflow.ParallelBatchNode):
            def exec(self, image):
                return image.filter(ImageFilter.GaussianBlur(4))  # CPU-bound

        Blur(executor=trioflow.executors.Processes())
    """

    max_workers: int | None = attrs.field(default=None, validator=_check_workers)
    kill_on_cancel: bool = attrs.field(default=True, kw_only=True)
    _limiters: trio.lowlevel.RunVar[trio.CapacityLimiter] = attrs.field(
        init=False, repr=False, factory=lambda: trio.lowlevel.RunVar("trioflow.executors.Processes")
    )

    inline = False

    def __attrs_post_init__(self) -> None:
        _require("trio_parallel", "trio-parallel", "processes", "trioflow.executors.Processes")

    @property
    def size(self) -> int:
        """The most processes at once (``max_workers``, or the number of CPUs)."""
        return self.max_workers if self.max_workers is not None else (os.cpu_count() or 1)

    def default_max_concurrency(self) -> int:
        """A batch with no cap runs at most ``max_workers`` items at once (more would only wait)."""
        return self.size

    def bind(self, owner: str, fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
        """``fn`` in a worker process; the node is pickled (and checked) here, once."""
        trio_parallel = _require("trio_parallel", "trio-parallel", "processes", "trioflow.executors.Processes")
        if _importing_main_in_worker():
            raise RuntimeError(_rerun_message(owner))
        shipped = ship(owner, fn)
        limiter = _per_run_limiter(self._limiters, self.size)
        run_sync = trio_parallel.run_sync
        broken = trio_parallel.BrokenWorkerError
        kill = self.kill_on_cancel

        async def in_process(item: Any) -> Any:
            job = pack(owner, item, attempt_var.get())
            try:
                return await run_sync(run_shipped, shipped, job, kill_on_cancel=kill, limiter=limiter)
            except broken as exc:
                raise _worker_died(owner, exc) from exc

        return in_process


# -- a dead worker process, and the script without ``if __name__ == "__main__":`` ------


def _worker_died(owner: str, exc: BaseException) -> WorkerDiedError:
    """The error for trio-parallel's ``BrokenWorkerError``: how the worker ended, and what may have done it.

    An exit (not a signal) gets a note about the ``__main__`` guard: a script
    without one is the usual way a newcomer's workers die, and the exit code
    (1, an uncaught error) says nothing of it.  When the main module is seen
    to start this run outside the guard, the note says so plainly.
    """
    code = next((getattr(arg, "exitcode", None) for arg in reversed(exc.args) if hasattr(arg, "exitcode")), None)
    error = WorkerDiedError(f"{owner}: a worker process died ({_how_it_died(code, exc)}) while running exec")
    if code is None or code >= 0:
        error.add_note(_guard_note())
    return error


def _how_it_died(code: int | None, exc: BaseException) -> str:
    """A dead worker's exit, in words: ``killed by SIGKILL``, ``exit code 3``."""
    if code is None:
        return str(exc) or "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


_GUARD = '`if __name__ == "__main__":`'


def _guard_note() -> str:
    try:
        start = _unguarded_start()
    except Exception:  # pragma: no cover - a hint must never hide the worker's death
        start = None
    if start is not None:
        path, line = start
        return (
            f"The main module {path} starts this run at line {line}, outside an {_GUARD} block. Python's spawn "
            "start method re-runs the main module in every worker process, so each worker started the run again "
            f"and died (its error is printed above). Put the script's top-level code under {_GUARD}."
        )
    return (
        f"A common cause: a script without an {_GUARD} guard (Python's spawn start method re-runs the main "
        "module in every worker process, which then starts the run again and dies; its error is printed above). "
        "Otherwise exec ended the process (os._exit, a crash in C code) or the OS did (out of memory)."
    )


def _unguarded_start() -> tuple[str, int] | None:
    """The main script's file and line that started this run, if that line is outside the ``__main__`` guard.

    Walks this thread's frames (in a Trio run they go back through
    ``trio.run`` to its caller) to the main module's top-level code, then
    reads the script: the line counts as guarded when any ``if`` around it
    tests ``__name__``.  None when it cannot tell (no script file, the run
    started in another thread, the source unreadable): then the note names
    the guard only as a common cause.
    """
    main = sys.modules.get("__main__")
    if main is None or not getattr(main, "__file__", None):
        return None  # python -c, a REPL, a notebook: spawn has no main module to re-run
    frame: types.FrameType | None = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:
        return None
    path, line = frame.f_code.co_filename, frame.f_lineno
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    around = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.stmt) and node.lineno <= line <= (node.end_lineno or node.lineno)
    ]
    if not around or any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) for node in around):
        return None  # the file changed since it ran
    if any(isinstance(node, ast.If) and _tests_name(node.test) for node in around):
        return None
    return path, line


def _tests_name(test: ast.expr) -> bool:
    return any(isinstance(node, ast.Name) and node.id == "__name__" for node in ast.walk(test))


def _importing_main_in_worker() -> bool:
    """True in a spawned process while it imports the main module (multiprocessing's own test, its ``_inheriting``)."""
    import multiprocessing

    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _rerun_message(owner: str) -> str:
    # While spawn re-runs the script, it is ``__mp_main__`` (``__main__`` is the worker's own).
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    script = f" {path}" if path else ""
    return (
        f"{owner}: this worker process is re-running the main module{script} (Python's spawn start method "
        f"imports it in every worker process of a Processes executor), and that module starts a run when "
        f"imported. Put the script's top-level code under {_GUARD}, so only the main process runs it."
    )


@attrs.define(eq=False, frozen=True)
class Dask:
    """Run ``exec`` on a Dask cluster (``distributed``): when a batch outgrows one machine.

    Each attempt is one ``client.submit`` of a pickled copy of the node's
    ``exec`` with the item, under a key of its own (a retry is a new task,
    never a cached failure).  Needs the ``dask`` extra (``distributed``), and
    trioflow installed on the workers.

    Args:
        client: a synchronous ``distributed.Client`` (``Client(cluster)`` or
            ``Client("tcp://scheduler:8786")``), shared by every node that uses
            this executor.

    Backpressure: at most the batch's ``max_concurrency`` futures exist at
    once, whatever the input size (with no cap: twice the cluster's threads,
    asked of the scheduler at batch start); a future is released as soon as
    its result is read, so the client and the scheduler hold O(cap) tasks.
    Completion wakes the Trio task through a callback on the client's event
    loop: no thread waits per future, so a cap of 1,000 costs no threads.

    On cancel (a timeout, a fail-fast sibling, an outer cancel) the future is
    cancelled on the scheduler (``force=True``) and released; a task already
    running on a worker thread finishes there and its result is dropped.  A
    worker lost under an attempt too many times (Dask's ``KilledWorker``) is a
    :class:`WorkerDiedError`, retried by the node's policy.

    Example::

        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=4) as cluster, Client(cluster) as client:
            node = Render(max_concurrency=64, executor=trioflow.executors.Dask(client))
            trioflow.run(trioflow.Flow(start=node), shared)
    """

    client: Any

    inline = False

    def __attrs_post_init__(self) -> None:
        distributed = _require("distributed", "distributed", "dask", "trioflow.executors.Dask")
        if not isinstance(self.client, distributed.Client):
            raise TypeError(f"Dask(client): client must be a distributed.Client, not {self.client!r}")
        if self.client.asynchronous:
            raise TypeError(
                "Dask(client): the client is asynchronous (it lives on an asyncio loop); pass a synchronous "
                "Client (the default: Client(cluster) or Client(address)), which runs its own loop in a thread"
            )

    def default_max_concurrency(self) -> int:
        """Twice the cluster's threads (asked of the scheduler): enough to keep every worker busy."""
        threads: int = sum(self.client.nthreads().values())
        return max(2, 2 * threads)

    def bind(self, owner: str, fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
        """``fn`` as one Dask task per attempt; the node is pickled (and checked) here, once.

        Each attempt crosses to the client's event loop (a thread of the
        client) once, with ``loop.add_callback``: there it is submitted, its
        result gathered and its future released; the result comes back with
        ``TrioToken.run_sync_soon``.  No thread waits per future.
        """
        import distributed

        shipped = ship(owner, fn)
        client = self.client
        loop = client.loop
        killed = distributed.KilledWorker
        closed = distributed.client.ClosedClientError

        async def on_loop(attempt: _DaskAttempt, job: bytes, key: str) -> None:
            if attempt.dropped:  # cancelled before it was sent
                return
            try:
                future = attempt.future = client.submit(run_shipped, shipped, job, key=key, pure=False)
            except Exception as exc:  # a closed client, say: the attempt fails, it does not hang
                attempt.deliver(outcome.Error(exc))
                return
            try:
                result: outcome.Outcome[Any] = outcome.Value(await client.gather(future, asynchronous=True))
            except Exception as exc:
                result = outcome.Error(exc)
            except BaseException:  # the client's loop is closing: the Trio side hears of a lost task
                attempt.deliver(outcome.Error(FutureCancelled(f"the Dask client closed under {key}")))
                raise
            finally:
                future.release()  # queues the release on this loop...
            # ...so the Trio task hears of the result after it: never one future too many.
            loop.add_callback(attempt.deliver, result)

        async def dropped(attempt: _DaskAttempt) -> None:  # on the loop, after on_loop started
            attempt.dropped = True
            future = attempt.future
            if future is not None:
                try:
                    await client.cancel([future], asynchronous=True, force=True)
                finally:
                    future.release()

        async def on_cluster(item: Any) -> Any:
            if client.status not in _OPEN:  # its loop may be gone: nothing sent there would ever answer
                raise closed(f"{owner}: the Dask client is {client.status}; its attempts cannot be sent")
            job = pack(owner, item, attempt_var.get())
            key = f"{owner}-{uuid.uuid4().hex}"
            attempt = _DaskAttempt(trio.lowlevel.current_trio_token())
            loop.add_callback(on_loop, attempt, job, key)
            try:
                await attempt.done.wait()
            except BaseException:
                # Cancelled: the task goes from the scheduler; its gather then ends by itself.
                loop.add_callback(dropped, attempt)
                raise
            try:
                return attempt.result.unwrap()  # type: ignore[union-attr]
            except killed as exc:
                raise WorkerDiedError(f"{owner}: Dask lost the workers running exec ({exc})") from exc
            except FutureCancelled as exc:
                raise WorkerDiedError(f"{owner}: the Dask task {key} was cancelled on the cluster") from exc

        return on_cluster


#: A Dask client's statuses in which its loop runs.
_OPEN = frozenset({"newly-created", "connecting", "running"})


class _DaskAttempt:
    """One attempt on Dask, shared by the Trio task and the client's loop.

    ``future`` and ``dropped`` are touched on the loop only; ``result`` and
    ``done`` in the Trio thread only (``deliver`` hops there).
    """

    __slots__ = ("done", "dropped", "future", "result", "token")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.done = trio.Event()
        self.future: Any = None
        self.dropped = False
        self.result: outcome.Outcome[Any] | None = None

    def deliver(self, result: outcome.Outcome[Any]) -> None:
        """On the client's loop: hand ``result`` to the Trio task (dropped if the run is over)."""
        try:
            self.token.run_sync_soon(self._arrived, result)
        except trio.RunFinishedError:  # nobody waits for this result any more
            pass

    def _arrived(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        self.done.set()
