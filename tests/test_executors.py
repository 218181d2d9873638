"""Executors: ``exec`` in threads, worker processes and on a Dask cluster (trioflow.executors).

Real components where they are the point: real threads blocking on real
barriers, real trio-parallel worker processes (spawned once, then cached by
trio-parallel, with bounded timeouts), and a real Dask ``LocalCluster`` of two
worker processes started and closed by this module.  Each behaviour that
``parallel_map`` shares with the node kinds runs through both (``via``).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow
from benchmarks.scenarios._dask import local_cluster, plain_asyncio_loops
from tests import remote
from trioflow.executors import Dask, Inline, Processes, Threads, WorkerDiedError

VIAS = ("ParallelBatchNode", "parallel_map")


async def batch(via: str, fn: Callable[[Any], Any], items: Any, **options: Any) -> list[Any]:
    """``fn`` over ``items`` through a ``ParallelBatchNode`` or through ``parallel_map``."""
    if via == "parallel_map":
        return await trioflow.parallel_map(fn, items, **options)
    shared: dict[str, Any] = {"items": items}
    await remote.Calls(params={"fn": fn}, **options).run(shared)
    return shared["results"]  # type: ignore[no-any-return]


def owner(via: str, fn: Callable[..., Any]) -> str:
    """The name the batch goes by in errors and task keys."""
    return "Calls" if via == "ParallelBatchNode" else fn.__name__


class Seen(trioflow.Instrument):
    """Keeps the errors that were retried, and counts finished items."""

    def __init__(self, on_finished: Callable[[int], None] | None = None) -> None:
        self.retried: list[Exception] = []
        self.finished = 0
        self.on_finished = on_finished

    def retry_scheduled(self, node: Any, index: int | None, attempt: int, delay: float, error: Exception) -> None:
        self.retried.append(error)

    def item_finished(self, node: Any, index: int, error: BaseException | None, value: Any = None) -> None:
        self.finished += 1
        if self.on_finished is not None:
            self.on_finished(self.finished)


def leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TestExecutorChecks:
    def test_Node_refuses_an_executor_for_an_async_exec(self) -> None:
        """An ``async def exec`` with a non-inline executor is a TypeError at construction naming the node."""

        class Fetch(trioflow.ParallelBatchNode):
            async def exec(self, item: Any) -> Any:
                return item

        with pytest.raises(TypeError, match=r"Fetch: exec is async def.*executor=Threads"):
            Fetch(executor=Threads())
        Fetch(executor=Inline())  # inline runs an async exec as always

    def test_parallel_map_refuses_an_executor_for_an_async_fn(self) -> None:
        """``parallel_map`` with an ``async def`` function and a thread executor is the same TypeError."""

        async def fetch(item: int) -> int:
            return item

        with pytest.raises(TypeError, match=r"fetch: exec is async def"):
            trio.run(functools.partial(trioflow.parallel_map, fetch, [1], executor=Threads()))

    def test_Node_refuses_an_object_that_is_not_an_executor(self) -> None:
        """An executor without ``bind`` is a TypeError naming the node."""
        with pytest.raises(TypeError, match=r"Calls.executor must be a trioflow.executors executor"):
            remote.Calls(executor="threads")

    @pytest.mark.parametrize("cls", [Threads, Processes])
    def test_max_workers_must_be_a_positive_int(self, cls: type[Any]) -> None:
        """``max_workers`` of 0, a float or a bool is a ValueError naming the executor."""
        for bad in (0, 2.5, True):
            with pytest.raises(ValueError, match=rf"{cls.__name__}: max_workers must be an int >= 1"):
                cls(max_workers=bad)

    @pytest.mark.parametrize(
        ("module", "extra", "make"),
        [("trio_parallel", "processes", lambda: Processes()), ("distributed", "dask", lambda: Dask(None))],
    )
    def test_executor_without_its_extra_names_the_extra_and_the_install_command(
        self, monkeypatch: pytest.MonkeyPatch, module: str, extra: str, make: Callable[[], Any]
    ) -> None:
        """Without its package, an executor says which extra installs it, with a command that works in a clone."""
        monkeypatch.setitem(sys.modules, module, None)  # an import of it now fails as if it were not installed
        with pytest.raises(ModuleNotFoundError) as caught:
            make()
        message = str(caught.value)
        assert f"'{extra}' extra" in message
        assert f"pip install -e '.[{extra}]'" in message

    def test_Dask_refuses_what_is_not_a_Client(self) -> None:
        """``Dask(client)`` with something else than a ``distributed.Client`` is a TypeError."""
        with pytest.raises(TypeError, match=r"client must be a distributed.Client"):
            Dask("tcp://127.0.0.1:8786")

    def test_Inline_is_the_default_behaviour(self) -> None:
        """``Inline()`` runs exec in the Trio task, like no executor: same thread, same results."""
        here = threading.get_ident()
        seen: list[int] = []

        def record(item: int) -> int:
            seen.append(threading.get_ident())
            return item * 2

        assert trio.run(functools.partial(trioflow.parallel_map, record, range(5), executor=Inline())) == [
            0, 2, 4, 6, 8
        ]
        assert seen == [here] * 5


class TestThreads:
    @pytest.mark.parametrize("via", VIAS)
    async def test_Threads_overlap_blocking_calls_up_to_the_cap(self, via: str) -> None:
        """200 blocking 50 ms calls with cap 20 run 20 at a time: each round meets at a barrier of 20, never more."""
        barrier = threading.Barrier(20, timeout=10)
        running = remote.Concurrency()

        def blocking(item: int) -> int:
            with running:
                barrier.wait()  # raises BrokenBarrierError unless 20 calls are in at once
                time.sleep(0.05)
            return item

        results = await batch(via, blocking, list(range(200)), max_concurrency=20, executor=Threads())
        assert results == list(range(200))
        assert running.peak == 20

    async def test_inline_blocking_calls_never_overlap(self) -> None:
        """The same blocking calls without an executor run one at a time, whatever the cap."""
        running = remote.Concurrency()

        def blocking(item: int) -> int:
            with running:
                time.sleep(0.002)
            return item

        assert await batch("ParallelBatchNode", blocking, list(range(40)), max_concurrency=20) == list(range(40))
        assert running.peak == 1

    async def test_Threads_max_workers_bounds_nodes_that_share_it(self) -> None:
        """Two batches sharing ``Threads(max_workers=3)`` run exactly 3 calls at once between them (a barrier of 3)."""
        running = remote.Concurrency()
        barrier = threading.Barrier(3, timeout=10)
        shared_pool = Threads(max_workers=3)

        def blocking(item: int) -> int:
            with running:
                barrier.wait()  # raises BrokenBarrierError unless 3 calls are in at once
            return item

        results: dict[int, list[Any]] = {}

        async def one(slot: int) -> None:
            results[slot] = await batch("ParallelBatchNode", blocking, list(range(6)), executor=shared_pool)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0)
            nursery.start_soon(one, 1)
        assert results == {0: list(range(6)), 1: list(range(6))}
        assert running.peak == 3

    async def test_as_completed_runs_a_plain_fn_on_Threads(self) -> None:
        """``as_completed`` with ``Threads``: each call in a worker thread, every (index, result) handed out once."""
        main = threading.get_ident()

        def where(item: int) -> tuple[int, bool]:
            return item, threading.get_ident() != main

        seen = {}
        async with trioflow.as_completed(where, range(10), max_concurrency=4, executor=Threads()) as results:
            async for index, value in results:
                seen[index] = value
        assert seen == {i: (i, True) for i in range(10)}

    async def test_Threads_cur_retry_is_the_attempt_in_the_thread(self) -> None:
        """``self.cur_retry`` inside a threaded exec is that attempt's number; a retried item gets attempt 1."""

        def first_fails(item: Any, attempt: int) -> tuple[Any, int, bool]:
            if attempt == 0:
                raise ValueError(item)
            return item, attempt, threading.current_thread() is not threading.main_thread()

        shared: dict[str, Any] = {"items": [1, 2, 3]}
        await remote.Retried(params={"fn": first_fails}, max_retries=2, executor=Threads()).run(shared)
        assert shared["results"] == [(1, 1, True), (2, 1, True), (3, 1, True)]

    async def test_Threads_timeout_abandons_the_thread_and_drops_its_late_result(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A timed-out attempt leaves at once (the fallback decides); the thread's late result goes nowhere."""
        release, finished = threading.Event(), threading.Event()

        class Slow(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> list[int]:
                return [0]

            def exec(self, item: int) -> str:
                try:
                    release.wait(10)
                    return "late"
                finally:
                    finished.set()

            def exec_fallback(self, prep_res: Any, exc: Exception) -> str:
                return f"fallback after {type(exc).__name__}"

            def post(self, shared: Any, prep_res: Any, exec_res: list[Any]) -> None:
                shared["results"] = exec_res

        shared: dict[str, Any] = {}
        await Slow(timeout=5, executor=Threads()).run(shared)
        assert shared["results"] == ["fallback after TooSlowError"]
        assert not finished.is_set()  # the call was still running when the node returned
        release.set()
        assert await trio.to_thread.run_sync(finished.wait, 10)
        assert shared["results"] == ["fallback after TooSlowError"]


@pytest.fixture(scope="module")
def warm_processes() -> Processes:
    """A Processes executor whose two workers are started (trio-parallel keeps them for the next runs)."""
    executor = Processes(max_workers=2)
    trio.run(functools.partial(trioflow.parallel_map, remote.square, range(4), executor=executor))
    return executor


class TestProcesses:
    @pytest.mark.parametrize("via", VIAS)
    async def test_Processes_run_items_in_other_processes_in_order(self, via: str, warm_processes: Processes) -> None:
        """Items run in worker processes (not this one), results in input order."""
        results = await batch(via, remote.pid, list(range(8)), executor=warm_processes)
        assert [item for item, _ in results] == list(range(8))
        assert os.getpid() not in {pid for _, pid in results}

    async def test_Processes_timeout_kills_the_worker(self, tmp_path: Path, warm_processes: Processes) -> None:
        """A timed-out attempt kills the worker process running it: its pid is gone when the node raises."""
        path = tmp_path / "pid"
        node = remote.Calls(params={"fn": remote.pid_then_hang}, timeout=3, executor=warm_processes)
        with pytest.raises(trioflow.BatchError) as caught:
            await node.run({"items": [str(path)]})
        assert [type(leaf) for leaf in leaves(caught.value)] == [trio.TooSlowError]
        pid = int(path.read_text())
        assert pid != os.getpid()
        assert not pid_alive(pid)

    async def test_parallel_map_outer_cancel_kills_the_worker(self, tmp_path: Path, warm_processes: Processes) -> None:
        """A cancel from outside a ``parallel_map`` kills the worker process running the item."""
        path = tmp_path / "pid"
        with trio.move_on_after(30) as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_when_started() -> None:
                    # A real process in another interpreter: poll for the pid it writes when it starts.
                    while not await trio.Path(path).exists() or not await trio.Path(path).read_text():  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_when_started)
                await trioflow.parallel_map(remote.pid_then_hang, [str(path)], executor=warm_processes)
        assert not scope.cancelled_caught, "the worker never started"
        assert not pid_alive(int(path.read_text()))

    @pytest.mark.parametrize("via", VIAS)
    async def test_Processes_unpicklable_node_is_a_clear_error_at_batch_start(self, via: str) -> None:
        """A node or function that holds a lock cannot be pickled: a TypeError naming it, before any item runs."""
        lock = threading.Lock()

        def holds_a_lock(item: int) -> int:
            with lock:
                return item

        with pytest.raises(TypeError) as caught:
            await batch(via, holds_a_lock, [1, 2], executor=Processes())
        message = str(caught.value)
        assert message.startswith(f"{owner(via, holds_a_lock)}: exec cannot be sent to a worker")
        assert "lock" in message and "pickled copy of the node" in message

    @pytest.mark.parametrize("via", VIAS)
    async def test_Processes_unpicklable_item_is_a_clear_error_naming_node_and_item(
        self, via: str, warm_processes: Processes
    ) -> None:
        """An item that cannot be pickled fails with a TypeError naming the node, noted with its index."""
        with pytest.raises(trioflow.BatchError) as caught:
            await batch(via, remote.square, [1, threading.Lock()], executor=warm_processes)
        (error,) = caught.value.exceptions
        assert isinstance(error, TypeError)
        assert str(error).startswith(f"{owner(via, remote.square)}: an item cannot be sent to a worker")
        assert any("item 1 of" in note for note in error.__notes__)

    async def test_Processes_worker_killed_by_the_OS_is_WorkerDiedError_and_retried(
        self, warm_processes: Processes
    ) -> None:
        """A worker killed by SIGKILL fails the attempt with WorkerDiedError; the retry runs in a live worker."""
        seen = Seen()
        shared: dict[str, Any] = {"items": ["a"]}
        node = remote.Retried(params={"fn": remote.die_on_first_attempt}, max_retries=2, executor=warm_processes)
        with trioflow.instrumented(seen):
            await node.run(shared)
        ((item, attempt, pid),) = shared["results"]
        assert (item, attempt) == ("a", 1) and pid != os.getpid()
        (error,) = seen.retried
        assert isinstance(error, WorkerDiedError)
        assert str(error) == "Retried: a worker process died (killed by SIGKILL) while running exec"
        assert not getattr(error, "__notes__", None)  # a signal is no missing __main__ guard: no hint about one

    async def test_Processes_worker_death_without_retries_fails_the_batch(self, warm_processes: Processes) -> None:
        """With one attempt, the dead worker's WorkerDiedError is the item's failure in the BatchError."""
        node = remote.Retried(params={"fn": remote.die_on_first_attempt}, executor=warm_processes)
        with pytest.raises(trioflow.BatchError) as caught:
            await node.run({"items": ["a"]})
        assert [type(leaf) for leaf in leaves(caught.value)] == [WorkerDiedError]


#: A script that runs a batch on Processes; ``{run}`` is its last line(s): guarded or not.
SCRIPT = """\
import os

import trioflow
from trioflow.executors import Processes


class {name}(trioflow.ParallelBatchNode):
    def prep(self, shared):
        return shared["items"]

    def exec(self, item):
        {body}

    def post(self, shared, prep_res, exec_res):
        shared["results"] = exec_res


{run}
"""


async def run_script(tmp_path: Path, name: str, body: str, run: str) -> tuple[int, str]:
    """Run a script file with this interpreter (60 s at most): its exit code and its stderr."""
    path = tmp_path / f"{name.lower()}.py"
    path.write_text(SCRIPT.format(name=name, body=body, run=run))
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, str(path)], cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stderr.decode()


GO = 'trioflow.run({name}(executor=Processes(max_workers=1)), {{"items": [1, 2, 3]}})'


class TestWorkerDeath:
    async def test_Processes_script_without_main_guard_says_to_add_it(self, tmp_path: Path) -> None:
        """A script with no ``__main__`` guard: a short error naming the node, the script's line and the fix."""
        code, stderr = await run_script(tmp_path, "Square", "return item * item", GO.format(name="Square"))
        assert code == 1
        assert "Square: a worker process died (exit code 1) while running exec" in stderr
        line = SCRIPT.splitlines().index("{run}") + 1
        assert f'square.py starts this run at line {line}, outside an `if __name__ == "__main__":` block' in stderr
        # The worker says what happened there, in place of multiprocessing's bootstrapping RuntimeError.
        assert "Square: this worker process is re-running the main module" in stderr
        assert "bootstrapping phase" not in stderr
        # Two tracebacks (the worker's, the script's) of about 50 lines each; this script printed 187 before.
        assert len(stderr.splitlines()) < 150, stderr

    async def test_Processes_worker_exit_names_the_node_and_the_exit_code(self, tmp_path: Path) -> None:
        """A worker that exits under exec in a guarded script: the node, the exit code, the guard only as a maybe."""
        run = 'if __name__ == "__main__":\n    ' + GO.format(name="Exit3")
        code, stderr = await run_script(tmp_path, "Exit3", "os._exit(3)", run)
        assert code == 1
        assert "Exit3: a worker process died (exit code 3) while running exec" in stderr
        assert 'A common cause: a script without an `if __name__ == "__main__":` guard' in stderr
        assert "starts this run at line" not in stderr


class TestFlows:
    async def test_ParallelBatchFlow_runs_a_sub_flow_node_on_Processes(self, warm_processes: Processes) -> None:
        """The image x filter grid with its filter node on Processes: the pixels of an inline run, from workers."""
        results = {}
        for executor in (None, warm_processes):
            load = remote.LoadImage()
            load >> remote.ApplyFilter(executor=executor)
            shared: dict[str, Any] = {}
            await remote.Grid(start=load, max_concurrency=4).run(shared)
            results[executor is None] = shared["out"]
        inline, shipped = results[True], results[False]
        assert set(inline) == set(shipped) == {(i, f) for i in range(2) for f in ("blur", "edges")}
        assert all(shipped[key][1] == inline[key][1] for key in inline)
        assert {pid for pid, _ in inline.values()} == {os.getpid()}
        assert os.getpid() not in {pid for pid, _ in shipped.values()}


# -- Dask ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of two single-threaded worker processes, no dashboard, for this module only.

    ``allowed-failures`` 0: a task whose worker dies is failed at once (``KilledWorker``), not resubmitted by Dask.
    """
    import dask

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        local_cluster(2, scheduler_kwargs={"dashboard": False}) as client,
    ):
        yield client


def _tasks_of(prefix: str, dask_scheduler: Any = None) -> int:
    return sum(1 for key in dask_scheduler.tasks if str(key).startswith(prefix))


async def scheduler_tasks(client: Any, prefix: str) -> int:
    """How many tasks with keys starting with ``prefix`` the scheduler holds."""
    return await trio.to_thread.run_sync(lambda: client.run_on_scheduler(_tasks_of, prefix))


async def wait_scheduler_clear(client: Any, prefix: str, within: float = 1.0) -> None:
    """Fail unless the scheduler drops every task of ``prefix`` within ``within`` seconds."""
    with trio.fail_after(within):
        while await scheduler_tasks(client, prefix):  # noqa: ASYNC110 - the real scheduler, on its own loop
            await trio.sleep(0.02)


class TestDask:
    @pytest.mark.parametrize("via", VIAS)
    async def test_Dask_keeps_input_order(self, via: str, client: Any) -> None:
        """Items that finish out of order on two workers come back in input order."""
        results = await batch(via, remote.jittered_square, list(range(60)), max_concurrency=8, executor=Dask(client))
        assert results == [i * i for i in range(60)]

    @pytest.mark.parametrize(("via", "cap"), [("ParallelBatchNode", 16), ("parallel_map", None)])
    async def test_Dask_futures_alive_never_above_the_cap_on_a_lazy_input(
        self, via: str, cap: int | None, client: Any
    ) -> None:
        """Across a lazy input of thousands of items, the client never holds more futures than the cap
        (with no cap: twice the cluster's two threads), sampled at every pull and every 5 ms."""
        n = 5000 if cap is not None else 500
        limit = cap if cap is not None else 4
        samples: list[int] = []

        def items() -> Iterator[int]:
            for i in range(n):
                samples.append(len(client.futures))
                yield i

        async def sample() -> None:
            while True:
                samples.append(len(client.futures))
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            results = await batch(via, remote.square, items(), max_concurrency=cap, executor=Dask(client))
            nursery.cancel_scope.cancel()
        assert results == [i * i for i in range(n)]
        assert len(samples) > n
        assert max(samples) <= limit
        assert max(samples) >= 2  # the samples did see work in flight
        assert len(client.futures) == 0

    @pytest.mark.parametrize("via", VIAS)
    async def test_Dask_outer_cancel_leaves_no_task_on_the_scheduler(self, via: str, client: Any) -> None:
        """A cancel from outside at half-way: within a second the scheduler holds none of the batch's tasks."""
        with trio.CancelScope() as scope:

            def half_way(finished: int) -> None:
                if finished == 100:
                    scope.cancel()

            with trioflow.instrumented(Seen(half_way)):
                await batch(via, remote.nap, list(range(200)), max_concurrency=8, executor=Dask(client))
        assert scope.cancelled_caught
        await wait_scheduler_clear(client, owner(via, remote.nap))
        assert len(client.futures) == 0

    @pytest.mark.parametrize("via", VIAS)
    async def test_Dask_failure_fails_fast_and_cancels_the_rest_on_the_cluster(
        self, via: str, client: Any, tmp_path: Path
    ) -> None:
        """Item 0 fails: the batch raises at once, the queued tasks are cancelled on the cluster and never run."""
        items = [(i, str(tmp_path)) for i in range(40)]
        with trio.fail_after(20):
            with pytest.raises(trioflow.BatchError) as caught:
                await batch(via, remote.fail_first_else_wait, items, max_concurrency=8, executor=Dask(client))
        assert [str(leaf) for leaf in leaves(caught.value)] == ["item 0 fails"]
        await wait_scheduler_clear(client, owner(via, remote.fail_first_else_wait))
        await trio.to_thread.run_sync(time.sleep, 1.0)  # a task already running on a worker thread ends in 0.5 s
        started = len(list(await trio.Path(tmp_path).iterdir()))
        assert started <= 3  # what the two worker threads had begun, not the 7 submitted nor the 39 others

    async def test_Dask_retry_is_a_new_task_with_a_new_key(self, client: Any) -> None:
        """A retried attempt is submitted under a new key (never served from the failed one), with cur_retry 1."""
        seen = Seen()
        shared: dict[str, Any] = {"items": [0, 1]}
        node = remote.Retried(params={"fn": remote.task_key_fails_first}, max_retries=2, executor=Dask(client))
        with trioflow.instrumented(seen):
            await node.run(shared)
        failed = {str(error) for error in seen.retried}
        assert len(failed) == 2
        for attempt, key in shared["results"]:
            assert attempt == 1 and key.startswith("Retried-") and key not in failed

    async def test_Dask_worker_killed_is_WorkerDiedError_and_retried(self, client: Any) -> None:
        """A Dask worker killed under an attempt is a WorkerDiedError (KilledWorker); the retry succeeds."""
        seen = Seen()
        shared: dict[str, Any] = {"items": ["a"]}
        node = remote.Retried(params={"fn": remote.die_on_first_attempt}, max_retries=2, executor=Dask(client))
        with trio.fail_after(60), trioflow.instrumented(seen):
            await node.run(shared)
        ((item, attempt, pid),) = shared["results"]
        assert (item, attempt) == ("a", 1) and pid != os.getpid()
        (error,) = seen.retried
        assert isinstance(error, WorkerDiedError)
        await trio.to_thread.run_sync(functools.partial(client.wait_for_workers, 2, timeout=30))

    async def test_Dask_closed_client_fails_the_items_rather_than_hanging(self, client: Any) -> None:
        """An attempt on a client that was closed fails with the client's error, promptly."""
        from distributed import Client
        from distributed.client import ClosedClientError

        with plain_asyncio_loops():
            closed = await trio.to_thread.run_sync(Client, client.scheduler.address)
        await trio.to_thread.run_sync(closed.close)
        with trio.fail_after(10), pytest.raises(trioflow.BatchError) as caught:
            await trioflow.parallel_map(remote.square, [1, 2], max_concurrency=2, executor=Dask(closed))
        assert [type(leaf) for leaf in leaves(caught.value)] == [ClosedClientError]

    async def test_Dask_runs_a_ParallelBatchFlow_grid(self, client: Any) -> None:
        """The image x filter grid with its filter node on Dask gives the pixels of an inline run."""
        results = {}
        for executor in (None, Dask(client)):
            load = remote.LoadImage()
            load >> remote.ApplyFilter(executor=executor)
            shared: dict[str, Any] = {}
            await remote.Grid(start=load, max_concurrency=4).run(shared)
            results[executor is None] = {key: pixels for key, (_, pixels) in shared["out"].items()}
        assert results[True] == results[False]

