"""Regression tests for the defects an adversarial review found (issue 8), grouped by the API they hit.

Each test names its defect's letter in its docstring.  Each failed on 10f302d (the main
before the fixes) and passes now; the property tests in ``test_parallel.py`` check the five
invariants after every fuzzed run besides.  Concurrency runs on an autojumping MockClock.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

import trioflow
from trioflow._parallel import SPAWN_CHECKPOINT

APIS = ("parallel_map", "as_completed", "ParallelBatchNode", "ParallelBatchFlow")


class Halt(BaseException):
    """A KeyboardInterrupt-like BaseException (pytest treats a real KeyboardInterrupt specially)."""


def run_in_mock_time(main: Callable[[], Awaitable[Any]], *instruments: trio.abc.Instrument) -> Any:
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0), instruments=instruments)


class SpawnCounter(trio.abc.Instrument):
    """Counts the tasks a run spawns."""

    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


def _as_param_sets(items: Any) -> Any:
    """A batch flow's input for ``items``: ``{"item": x}`` per item, as lazy as ``items``."""
    if isinstance(items, AsyncIterator) or hasattr(items, "__aiter__"):

        async def agen() -> AsyncIterator[dict[str, Any]]:
            try:
                async for item in items:
                    yield {"item": item}
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()

        return agen()

    def gen() -> Iterator[dict[str, Any]]:
        try:
            for item in items:
                yield {"item": item}
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    return gen()


async def run_api(api: str, fn: Callable[[Any], Any], items: Any, **options: Any) -> list[Any]:
    """``fn`` over ``items`` through one of the four parallel entry points; results in input order."""
    if api == "parallel_map":
        return await trioflow.parallel_map(fn, items, **options)
    if api == "as_completed":
        got: dict[int, Any] = {}
        async with trioflow.as_completed(fn, items, **options) as results:
            async for index, value in results:
                got[index] = value
        return [got[i] for i in sorted(got)]
    shared: dict[str, Any] = {}
    if api == "ParallelBatchNode":

        class Mapped(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> Any:
                return items

            def exec(self, item: Any) -> Any:  # fn's result, or its coroutine for the engine to await
                return fn(item)

            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
                shared["results"] = exec_res

        await Mapped(**options).run(shared)
        return list(shared["results"])

    class Step(trioflow.Node):
        def exec(self, prep_res: Any) -> Any:
            return fn(self.params["item"])

        def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
            shared.setdefault("by_item", {})[self.params["item"]] = exec_res

    class Runs(trioflow.ParallelBatchFlow):
        def prep(self, shared: Any) -> Any:
            return _as_param_sets(items)

    await Runs(start=Step(), **options).run(shared)
    by_item = shared.get("by_item", {})
    return [by_item[key] for key in sorted(by_item)]


async def double(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return 2 * x


async def sleepy(x: int) -> int:
    await trio.sleep(1)
    return x


# -- leaks, hangs, lost data ---------------------------------------------------------------


class TestPoolLimiterToken:
    @pytest.mark.parametrize("api", APIS)
    @pytest.mark.parametrize("how", ["cancel", "fail", "interrupt"])
    def test_no_cap_limiter_token_comes_back_when_a_pull_is_cut(self, api: str, how: str) -> None:
        """A: with no cap and a limiter, a pull cut short (an outer cancel, a fail-fast failure, a
        BaseException from the input) gives its token back; a later batch sharing the limiter runs."""

        async def main() -> int:
            limiter = trio.CapacityLimiter(2)

            async def items() -> AsyncIterator[int]:
                yield 0
                if how == "interrupt":
                    raise Halt
                await trio.sleep(10)  # the pull of item 1 blocks while its token is held
                yield 1

            async def work(x: int) -> int:
                await trio.sleep(1)
                if how == "fail":
                    raise ValueError(x)
                return x

            with contextlib.suppress(trioflow.BatchError, Halt), trio.move_on_after(5):
                await run_api(api, work, items(), limiter=limiter)
            leaked = limiter.borrowed_tokens
            with trio.fail_after(100):  # a leak of both tokens would hang this batch
                assert await trioflow.parallel_map(double, [1, 2, 3], limiter=limiter) == [2, 4, 6]
            return leaked

        assert run_in_mock_time(main) == 0


class TestPoolRecordsBeforeCheckpoint:
    @pytest.mark.parametrize("api", ["parallel_map", "ParallelBatchNode"])
    async def test_plain_def_results_finished_before_a_failure_are_in_completed(
        self, api: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        """C: results that a plain ``def`` exec returned before another item failed are in
        BatchError.completed (they were lost at the checkpoint after the call)."""

        def work(i: int) -> int:
            if i == 3:
                raise ValueError(i)
            return 10 * i

        with pytest.raises(trioflow.BatchError) as info:
            await run_api(api, work, list(range(6)), max_concurrency=4)
        assert info.value.completed == {0: 0, 1: 10, 2: 20}


class TestParallelBatchFlowCollect:
    async def test_ParallelBatchFlow_collect_gives_post_each_runs_outcome(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """D: with on_error="collect" a failed sub-flow run's exception reaches post in its slot,
        beside the other runs' last actions; it never vanishes."""

        class Step(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                await trio.sleep(self.params["i"])
                if self.params["i"] == 1:
                    raise ValueError("run 1 failed")

            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> str:
                return f"ok{self.params['i']}"

        class Grid(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[dict[str, int]]:
                return [{"i": i} for i in range(3)]

            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> str:
                shared["outcomes"] = exec_res
                return "posted"

        shared: dict[str, Any] = {}
        assert await Grid(start=Step(), on_error="collect").run(shared) == "posted"
        first, failed, last = shared["outcomes"]
        assert (first, last) == ("ok0", "ok2")
        assert isinstance(failed, ValueError) and str(failed) == "run 1 failed"
        assert "raised by param set 1 of Grid" in failed.__notes__


class TestPoolWorkers:
    @pytest.mark.parametrize("api", APIS)
    def test_cap_far_above_the_item_count_starts_workers_as_items_arrive(self, api: str) -> None:
        """F: three items under max_concurrency=100,000 start a handful of tasks, not 100,000."""
        counter = SpawnCounter()

        async def main() -> int:
            before = counter.spawned
            assert await run_api(api, double, [1, 2, 3], max_concurrency=100_000) == [2, 4, 6]
            return counter.spawned - before

        assert run_in_mock_time(main, counter) <= 8

    @pytest.mark.parametrize("api", APIS)
    async def test_cap_of_sys_maxsize_runs_and_can_be_cancelled(
        self, api: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        """F: max_concurrency=sys.maxsize neither hangs nor ignores move_on_after."""
        assert await run_api(api, double, [1, 2, 3], max_concurrency=sys.maxsize) == [2, 4, 6]
        with trio.move_on_after(0.5) as scope:
            await run_api(api, sleepy, range(10), max_concurrency=sys.maxsize)
        assert scope.cancelled_caught

    @pytest.mark.parametrize("api", APIS)
    def test_no_cap_endless_plain_generator_can_be_cancelled(self, api: str) -> None:
        """G: with no cap, the loop that starts a task per item reaches a checkpoint regularly, so
        a cancel stops an endless plain generator (bounded here, so a broken engine fails, not hangs)."""

        async def main() -> tuple[bool, int]:
            pulled = 0
            with trio.CancelScope() as scope:

                def endless() -> Iterator[int]:
                    nonlocal pulled
                    for i in range(200_000):
                        pulled += 1
                        if pulled == 1000:
                            scope.cancel()
                        yield i

                await run_api(api, sleepy, endless())
            return scope.cancelled_caught, pulled

        cancelled, pulled = run_in_mock_time(main)
        assert cancelled
        assert pulled <= 1000 + SPAWN_CHECKPOINT

    @pytest.mark.parametrize("api", APIS)
    def test_no_cap_max_pending_bounds_the_tasks_of_an_endless_input(self, api: str) -> None:
        """G: with no cap, max_pending bounds the items in progress (the documented bound): an
        endless input of slow items never has more than max_pending of them alive."""
        alive = peak = 0

        async def slow(x: int) -> int:
            nonlocal alive, peak
            alive += 1
            peak = max(peak, alive)
            try:
                await trio.sleep(1)
                return x
            finally:
                alive -= 1

        async def main() -> None:
            with trio.move_on_after(20):
                await run_api(api, slow, iter(range(10**9)), max_pending=50)

        run_in_mock_time(main)
        assert peak == 50


class TestPlainExecYields:
    @pytest.mark.parametrize("kind", [trioflow.BatchNode, trioflow.ParallelBatchNode])
    @pytest.mark.parametrize("variant", ["timeout", "fallback"])
    async def test_plain_exec_under_a_timeout_and_a_plain_fallback_yield_after_each_item(
        self, kind: type[trioflow.BatchNode], variant: str
    ) -> None:
        """P: a plain ``def exec`` with ``timeout=``, and a plain ``exec_fallback``, yield to Trio after
        each item, as the docstring promises: a sibling task gets a turn per item."""
        turns = 0
        done = False

        async def sibling() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await trio.lowlevel.checkpoint()

        class Plain(kind):  # type: ignore[valid-type,misc]
            def prep(self, shared: Any) -> range:
                return range(200)

            def exec(self, item: int) -> int:
                if variant == "fallback":
                    raise ValueError(item)
                return item

            def exec_fallback(self, prep_res: int, exc: Exception) -> int:
                return -1

        options: dict[str, Any] = {"timeout": 10} if variant == "timeout" else {}
        if kind is trioflow.ParallelBatchNode:
            options["max_concurrency"] = 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sibling)
            await Plain(**options).run({})
            done = True
        assert turns >= 190


class TestPoolClosesInput:
    @pytest.mark.parametrize(
        "kind", [trioflow.BatchNode, trioflow.ParallelBatchNode, trioflow.BatchFlow, trioflow.ParallelBatchFlow]
    )
    async def test_half_pulled_plain_generator_is_closed_when_the_batch_stops(
        self, kind: type[trioflow.Node], autojump_clock: trio.testing.MockClock
    ) -> None:
        """Also: a plain generator left half-pulled by a failure is closed (its finally runs) before the
        batch raises, not at garbage collection."""
        closed = False

        def items() -> Iterator[Any]:
            nonlocal closed
            try:
                for i in range(100):
                    yield {"i": i} if issubclass(kind, trioflow.Flow) else i
            finally:
                closed = True

        class Fails(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                await trio.sleep(1)
                raise ValueError("stop")

        source = items()  # held here, so only an explicit close (not garbage collection) runs its finally

        class Batch(kind):  # type: ignore[valid-type,misc]
            def prep(self, shared: Any) -> Iterable[Any]:
                return source

            async def exec(self, item: Any) -> None:
                await trio.sleep(1)
                raise ValueError("stop")

        options: dict[str, Any] = {"max_concurrency": 2} if "Parallel" in kind.__name__ else {}
        node = Batch(start=Fails(), **options) if issubclass(kind, trioflow.Flow) else Batch(**options)
        with pytest.raises((ValueError, trioflow.BatchError)):
            await node.run({})
            raise AssertionError("the batch did not fail")
        assert closed


# -- wrong results and broken promises -------------------------------------------------------


class TestBareBaseExceptions:
    async def test_as_completed_lets_a_lone_BaseException_out_bare(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """J: an item's KeyboardInterrupt-like exception leaves as_completed bare, as parallel_map's does."""

        async def work(i: int) -> int:
            await trio.sleep(i)
            if i == 1:
                raise Halt("item 1")
            return i

        with pytest.raises(Halt, match="item 1"):
            async with trioflow.as_completed(work, range(3)) as results:
                async for _ in results:
                    pass

    @pytest.mark.parametrize("api", APIS)
    @pytest.mark.parametrize("cap", [None, 3])
    async def test_outer_cancel_reaches_the_caller_as_a_bare_Cancelled(
        self, api: str, cap: int | None, autojump_clock: trio.testing.MockClock
    ) -> None:
        """K: an outer cancel comes out of a parallel batch as a bare trio.Cancelled, so an
        ``except trio.Cancelled`` around it sees it."""
        caught: BaseException | None = None
        with trio.move_on_after(0.5):
            try:
                await run_api(api, sleepy, range(5), max_concurrency=cap)
            except trio.Cancelled as exc:
                caught = exc
                raise
        assert isinstance(caught, trio.Cancelled)

    @pytest.mark.parametrize("api", APIS)
    @pytest.mark.parametrize("link", ["cause", "context"])
    async def test_lone_BaseException_keeps_its_cause_and_context(
        self, api: str, link: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        """L: a lone BaseException raised ``from`` an error (or while handling one) comes out bare
        with that ``__cause__`` (or ``__context__``) intact."""

        async def work(i: int) -> int:
            await trio.sleep(i)
            if i == 1:
                if link == "cause":
                    raise Halt("stop") from KeyError("why")
                try:
                    raise KeyError("during")
                except KeyError:
                    raise Halt("stop")  # noqa: B904  # the point: an implicit __context__
            return i

        with pytest.raises(Halt) as info:
            await run_api(api, work, range(3), max_concurrency=2)
        if link == "cause":
            assert isinstance(info.value.__cause__, KeyError) and info.value.__cause__.args == ("why",)
        else:
            assert info.value.__cause__ is None
            assert isinstance(info.value.__context__, KeyError) and info.value.__context__.args == ("during",)


class Flaky(trioflow.Node):
    """Fails every attempt; counts them; its fallback returns a marker."""

    def prep(self, shared: Any) -> Any:
        return shared

    async def exec(self, shared: Any) -> None:
        shared["attempts"] = shared.get("attempts", 0) + 1
        await trio.lowlevel.checkpoint()
        raise ValueError("always")

    def exec_fallback(self, shared: Any, exc: Exception) -> str:
        return "fallback"

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
        shared["result"] = exec_res


class TestRetryPolicy:
    async def test_Node_huge_backoff_caps_the_wait_and_reaches_the_fallback(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """M: backoff=1e200 does not raise OverflowError: the wait is capped at one day and the
        fallback is called after the last attempt."""
        shared: dict[str, Any] = {}
        start = trio.current_time()
        await Flaky(max_retries=4, wait=1, backoff=1e200).run(shared)
        assert shared == {"attempts": 4, "result": "fallback"}
        assert trio.current_time() - start == 1 + 2 * 86_400

    async def test_Node_four_hundred_attempts_with_backoff_10_all_run(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """M: max_retries=400 with backoff=10 makes all 400 attempts (it failed after 310)."""
        shared: dict[str, Any] = {}
        await Flaky(max_retries=400, wait=1, backoff=10).run(shared)
        assert shared == {"attempts": 400, "result": "fallback"}

    @pytest.mark.parametrize("kind", ["Node", "ParallelBatchNode"])
    async def test_exec_fallback_assigned_on_the_instance_is_honoured(
        self, kind: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Q: an exec_fallback assigned on the instance is called with max_retries=1, as an
        instance-assigned exec or post is."""

        async def failing(prep_res: Any) -> None:
            raise ValueError("no")

        node: trioflow.Node
        if kind == "Node":
            node = trioflow.Node()
        else:

            class Batch(trioflow.ParallelBatchNode):
                def prep(self, shared: Any) -> list[int]:
                    return [1, 2]

            node = Batch()
        node.exec = failing  # type: ignore[method-assign]
        node.exec_fallback = lambda prep_res, exc: f"rescued {exc}"  # type: ignore[method-assign]
        got: list[Any] = []
        node.post = lambda shared, prep_res, exec_res: got.append(exec_res)  # type: ignore[method-assign]
        await node.run({})
        assert got == (["rescued no"] if kind == "Node" else [["rescued no", "rescued no"]])


class TestAsCompletedLimiter:
    @pytest.mark.parametrize("cap", [None, 2])
    async def test_as_completed_gives_the_token_back_before_the_consumer_takes_the_result(
        self, cap: int | None, autojump_clock: trio.testing.MockClock
    ) -> None:
        """T: a finished item gives its limiter token back at once, not when a slow consumer takes its
        result: another node sharing the limiter gets it when the item finishes."""
        limiter = trio.CapacityLimiter(1)
        acquired_at: float | None = None

        async def other() -> None:
            nonlocal acquired_at
            await trio.sleep(0.1)
            async with limiter:
                acquired_at = trio.current_time()

        async def work(i: int) -> int:
            await trio.sleep(0.5)
            return i

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            async with trioflow.as_completed(work, [0], limiter=limiter, max_concurrency=cap) as results:
                await trio.sleep(10)  # a busy consumer
                assert [value async for _, value in results] == [0]
        assert acquired_at == 0.5


# -- unclear errors ---------------------------------------------------------------------------


class Words(trioflow.BatchNode):
    def prep(self, shared: Any) -> Any:
        return shared["items"]


class Grid(trioflow.BatchFlow):
    def prep(self, shared: Any) -> Any:
        return {"image": "cat.png"}


class Watcher:
    async def node_started(self, node: Any) -> None:  # async: refused
        pass


def _run_inside_a_run() -> None:
    async def inside() -> None:
        trioflow.run(trioflow.Node(), {})

    trio.run(inside)


def _flow_containing_itself() -> None:
    inner = trioflow.Flow()
    loop = trioflow.Flow(start=inner)
    inner.start(trioflow.Node() >> loop)
    trioflow.run(loop, {})


def _attach_async_hook() -> None:
    with trioflow.instrumented(Watcher()):
        pass  # pragma: no cover


UNCLEAR: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("retry_on=None", lambda: trioflow.Node(retry_on=None), TypeError,
     r"^Node\.retry_on must be an Exception subclass or a tuple of them.*, not None$"),
    ("retry_on=an instance", lambda: trioflow.Node(retry_on=ValueError("x")), TypeError,
     r"^Node\.retry_on must be an Exception subclass.*not ValueError\('x'\)$"),
    ("retry_on=a str", lambda: trioflow.Node(retry_on="ValueError"), TypeError,
     r"^Node\.retry_on must be an Exception subclass.*not 'ValueError'$"),
    ("params a list", lambda: trioflow.Node(params=[("a", 1)]), TypeError,  # type: ignore[arg-type]
     r"^Node\.params must be a dict of param names to values, not list"),
    ("set_params an int", lambda: trioflow.Node().set_params(3), TypeError,  # type: ignore[arg-type]
     r"^Node\.params must be a dict of param names to values, not int 3"),
    ("ParallelBatchFlow params", lambda: trioflow.ParallelBatchFlow(params=3), TypeError,  # type: ignore[arg-type]
     r"^ParallelBatchFlow\.params must be a dict"),
    ("prep returns a str", lambda: trioflow.run(Words(), {"items": "abc"}), TypeError,
     r"^Words\.prep returned str 'abc', which a batch would iterate item by item \(characters\).*"
     r"wrap a single item in a list"),
    ("prep returns bytes", lambda: trioflow.run(Words(), {"items": b"abc"}), TypeError,
     r"^Words\.prep returned bytes b'abc'.*wrap a single item in a list"),
    ("prep returns a dict", lambda: trioflow.run(Words(), {"items": {"a": 1}}), TypeError,
     r"^Words\.prep returned dict \{'a': 1\}, which a batch would iterate item by item \(keys\)"),
    ("BatchFlow.prep returns one dict", lambda: trioflow.run(Grid(start=trioflow.Node()), {}), TypeError,
     r"^Grid\.prep returned dict \{'image': 'cat\.png'\}.*return a list of dicts"),
    ("trioflow.run inside a run", _run_inside_a_run, RuntimeError,
     r"called inside a running Trio program.*`await flow\.run\(shared\)`"),
    ("parallel_map of a non-function", lambda: trio.run(trioflow.parallel_map, 42, [1]), TypeError,  # type: ignore[arg-type]
     r"^parallel_map: fn must be a function of one item \(async def or plain def\), not 42$"),
    ("a flow that contains itself", _flow_containing_itself, ValueError,
     r"^Flow contains itself .*a flow cannot run inside itself"),
    ("an async instrument hook", _attach_async_hook, TypeError,
     r"^instrument Watcher\.node_started is async def: instrument hooks are plain methods"),
    ("Flow(max_retries=3)", lambda: trioflow.Flow(max_retries=3), ValueError,
     r"^Flow\.max_retries=3: a flow does not retry, time out or ship its run; set the policy on its nodes"),
    ("Flow(timeout=5)", lambda: trioflow.Flow(timeout=5), ValueError, r"^Flow\.timeout=5: a flow does not"),
    ("Flow(retry_on=...)", lambda: trioflow.Flow(retry_on=KeyError), ValueError,
     r"^Flow\.retry_on: a flow does not retry its run"),
]


class TestUnclearErrors:
    @pytest.mark.parametrize(("bad", "action", "error", "message"), UNCLEAR, ids=[case[0] for case in UNCLEAR])
    def test_bad_input_gets_an_error_naming_the_node_and_what_was_expected(
        self, bad: str, action: Callable[[], Any], error: type[Exception], message: str
    ) -> None:
        """Unclear errors: each bad input is refused with a message that names the node (or API) and
        says what was expected."""
        with pytest.raises(error, match=message):
            action()

    @pytest.mark.parametrize("kind", ["BatchNode", "ParallelBatchNode", "BatchFlow", "ParallelBatchFlow"])
    def test_an_input_that_raises_is_worded_the_same_everywhere(self, kind: str) -> None:
        """Unclear errors: an input generator that raises gets the same note in every batch kind:
        "raised while X pulled item i from its input" (not "raised by item i", as if exec raised)."""

        def items() -> Iterator[Any]:
            yield {"i": 0} if kind.endswith("Flow") else 0
            raise OSError("disk gone")

        base = getattr(trioflow, kind)
        cls = type("Source", (base,), {"prep": lambda self, shared: items()})
        node = cls(start=trioflow.Node()) if kind.endswith("Flow") else cls()
        with pytest.raises((OSError, trioflow.BatchError)) as info:
            trioflow.run(node, {})
        exc = info.value.exceptions[0] if isinstance(info.value, trioflow.BatchError) else info.value
        assert isinstance(exc, OSError)
        assert exc.__notes__ == ["raised while Source pulled item 1 from its input"]

    @pytest.mark.parametrize("api", ["parallel_map", "as_completed"])
    async def test_parallel_map_takes_a_plain_function(self, api: str) -> None:
        """Unclear errors, decided: parallel_map and as_completed take a plain ``def`` function too
        (it runs inline; an executor can run it elsewhere), instead of failing on ``await``."""
        assert await run_api(api, lambda x: x + 1, [1, 2, 3], max_concurrency=2) == [2, 3, 4]

