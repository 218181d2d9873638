"""adapters.pocketflow: PocketFlow 0.0.3's classes, same behaviour, on the Trio engine."""

from __future__ import annotations

import asyncio
import contextvars
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import pocketflow as real
import pytest
import trio_asyncio
from trio_asyncio._sync import SyncTrioEventLoop

import adapters.pocketflow as pf
from adapters import aio

NAMES = [
    "BaseNode", "Node", "BatchNode", "Flow", "BatchFlow", "AsyncNode", "AsyncBatchNode",
    "AsyncParallelBatchNode", "AsyncFlow", "AsyncBatchFlow", "AsyncParallelBatchFlow",
]

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def _trio_asyncio_loop() -> asyncio.AbstractEventLoop:
    # What asyncio.run builds once trio_asyncio is imported (and no other policy is set).
    loop = SyncTrioEventLoop()
    assert isinstance(loop, trio_asyncio.BaseTrioEventLoop)
    return loop  # type: ignore[no-any-return]


@pytest.fixture(params=["asyncio", "trio-asyncio"])
def arun(request: pytest.FixtureRequest) -> Runner:
    """Runs a coroutine to completion on a fresh loop: a plain asyncio loop (the flow
    runs as a Trio guest) or a trio-asyncio loop (the flow runs in the Trio run under it)."""
    factory = asyncio.SelectorEventLoop if request.param == "asyncio" else _trio_asyncio_loop

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return run


async def ticks(n: int) -> None:
    """n turns of the asyncio loop: a delay measured in loop iterations, not seconds."""
    for _ in range(n):
        await asyncio.sleep(0)


class TestClasses:
    def test_pocketflow_names_and_hierarchy_match(self) -> None:
        """The eleven names exist and subclass each other exactly as PocketFlow's do."""
        assert sorted(pf.__all__) == sorted(NAMES)
        for name in NAMES:
            ours = [k.__name__ for k in getattr(pf, name).__mro__]
            theirs = [k.__name__ for k in getattr(real, name).__mro__]
            assert ours == theirs
        assert isinstance(pf.AsyncParallelBatchFlow(), pf.BatchFlow)
        assert isinstance(pf.AsyncBatchNode(), pf.BatchNode)
        assert not isinstance(pf.Flow(), pf.Node)

    def test_Node_constructor_and_attributes_match(self) -> None:
        """Positional max_retries/wait, params and successors as PocketFlow sets them."""
        for mod in (pf, real):
            node = mod.Node(3, 0.5)
            assert (node.max_retries, node.wait, node.params, node.successors) == (3, 0.5, {}, {})
            assert mod.Flow(node).start_node is node
            with pytest.raises(TypeError, match="Action must be a string"):
                node - 1


def _warnings_of(fn: Callable[[], Any]) -> list[tuple[type[Warning], str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [(w.category, str(w.message)) for w in caught]


class TestSync:
    def test_Flow_run_branches_and_returns_last_action(self) -> None:
        """A sync flow with a branch and a loop gives PocketFlow's shared and action."""

        def program(mod: Any) -> tuple[dict[str, Any], Any]:
            class Count(mod.Node):
                def prep(self, shared: dict[str, Any]) -> Any:
                    shared["n"] = shared.get("n", 0) + 1

                def post(self, shared: dict[str, Any], p: Any, e: Any) -> str:
                    return "again" if shared["n"] < 3 else "stop"

            class End(mod.Node):
                def post(self, shared: dict[str, Any], p: Any, e: Any) -> str:
                    shared["end"] = self.params
                    return "finished"

            count = Count()
            count - "again" >> count
            count - "stop" >> End()
            flow = mod.Flow(start=count)
            flow.set_params({"k": 1})
            shared: dict[str, Any] = {}
            return shared, flow.run(shared)

        assert program(pf) == program(real) == ({"n": 3, "end": {"k": 1}}, "finished")

    def test_warnings_match_in_text_and_count(self) -> None:
        """Overwriting a successor, running a wired node alone, a missing action: same UserWarnings."""

        def program(mod: Any) -> None:
            a, b = mod.Node(), mod.Node()
            a >> b
            a >> b
            a.run({})
            a.post = lambda *args: "nowhere"
            mod.Flow(start=a).run({})
            x = mod.AsyncNode()
            x >> mod.AsyncNode()
            asyncio.run(x.run_async({}))

        ours, theirs = _warnings_of(lambda: program(pf)), _warnings_of(lambda: program(real))
        assert ours == theirs
        assert len(ours) == 4 and all(category is UserWarning for category, _ in ours)

    def test_default_warning_filter_shows_each_text_once(self) -> None:
        """Under the default filter a repeated warning is shown as often as PocketFlow shows it."""

        def program(mod: Any) -> int:
            with warnings.catch_warnings(record=True) as caught:
                warnings.resetwarnings()
                warnings.simplefilter("default")
                for _ in range(3):
                    a = mod.Node()
                    a - "x" >> mod.Node()
                    mod.Flow(start=a).run({})
            return len(caught)

        assert program(pf) == program(real) == 1

    def test_max_retries_zero_skips_exec(self) -> None:
        """max_retries=0: exec and fallback are never called and post gets None."""

        def program(mod: Any) -> list[Any]:
            calls: list[Any] = []

            class N(mod.Node):
                def exec(self, p: Any) -> Any:
                    calls.append("exec")

                def post(self, shared: Any, p: Any, e: Any) -> Any:
                    calls.append(("post", e))

            N(max_retries=0).run({})
            return calls

        assert program(pf) == program(real) == [("post", None)]

    def test_cur_retry_and_fallback_match(self) -> None:
        """cur_retry counts attempts, stays on the node after exec, and the fallback sees the last error."""

        def program(mod: Any) -> dict[str, Any]:
            class Flaky(mod.Node):
                def exec(self, p: Any) -> Any:
                    raise ValueError(f"attempt {self.cur_retry}")

                def exec_fallback(self, p: Any, exc: Exception) -> Any:
                    return str(exc)

                def post(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                    shared.update(result=e, retry=self.cur_retry)

            shared: dict[str, Any] = {}
            Flaky(max_retries=3).run(shared)
            return shared

        assert program(pf) == program(real) == {"result": "attempt 2", "retry": 2}

    def test_methods_are_looked_up_on_the_instance(self) -> None:
        """A method assigned on the instance (copied with it into the flow) is the one called."""

        def program(mod: Any) -> dict[str, Any]:
            a = mod.Node()
            a.prep = lambda shared: shared.setdefault("seen", []).append("prep")
            a.post = lambda shared, p, e: "go"
            b = mod.Node()
            b.exec = lambda p: 42
            b.post = lambda shared, p, e: shared.update(b=e)
            a - "go" >> b
            shared: dict[str, Any] = {}
            mod.Flow(start=a).run(shared)
            return shared

        assert program(pf) == program(real) == {"seen": ["prep"], "b": 42}

    def test_batch_prep_returning_None(self) -> None:
        """prep -> None: a BatchNode runs no item; an AsyncBatchNode raises TypeError, as in PocketFlow."""
        for mod in (pf, real):
            shared: dict[str, Any] = {}
            node = mod.BatchNode()
            node.post = lambda shared, p, e: shared.update(e=e)
            node.run(shared)
            assert shared == {"e": []}
            with pytest.raises(TypeError):
                asyncio.run(mod.AsyncBatchNode().run_async({}))

    def test_AsyncNode_in_sync_Flow_raises_RuntimeError(self) -> None:
        """Sync run() of an async node (alone or in a Flow) says to use run_async."""
        for mod in (pf, real):
            with pytest.raises(RuntimeError, match=r"Use run_async\."):
                mod.AsyncNode().run({})
            with pytest.raises(RuntimeError, match=r"Use run_async\."):
                mod.Flow(start=mod.AsyncNode()).run({})

    def test_exceptions_come_out_bare(self) -> None:
        """An exception in a sync node is the same object, not a group."""
        error = KeyError("k")

        class Boom(pf.Node):
            def exec(self, p: Any) -> Any:
                raise error

        with pytest.raises(KeyError) as info:
            pf.Flow(start=pf.Flow(start=Boom())).run({})
        assert info.value is error


class Collect(pf.AsyncParallelBatchNode):
    """Appends each item when its exec_async finishes (after delay(item) loop turns)."""

    def __init__(self, delays: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delays = delays

    async def prep_async(self, shared: dict[str, Any]) -> list[int]:
        return list(range(len(self.delays)))

    async def exec_async(self, item: int) -> int:
        await ticks(self.delays[item])
        self.params.setdefault("finished", []).append(item)
        return item * 10

    async def post_async(self, shared: dict[str, Any], p: Any, e: list[int]) -> str:
        shared["results"] = e
        shared["finished"] = self.params["finished"]
        return "done"


class TestAsync:
    def test_run_async_in_asyncio_run_and_run_until_complete(self, arun: Runner) -> None:
        """run_async works awaited from asyncio.run and from loop.run_until_complete."""
        shared: dict[str, Any] = {}
        assert arun(Collect([2, 0, 1]).run_async(shared)) == "done"
        assert shared["results"] == [0, 10, 20]
        loop = asyncio.SelectorEventLoop()
        try:
            other: dict[str, Any] = {}
            assert loop.run_until_complete(Collect([0]).run_async(other)) == "done"
        finally:
            loop.close()

    def test_AsyncParallelBatchNode_equal_delays_finish_in_start_order(self, arun: Runner) -> None:
        """Items with equal delays finish in input order, as under asyncio.gather."""
        shared: dict[str, Any] = {}
        arun(Collect([3] * 12).run_async(shared))
        assert shared["finished"] == list(range(12))

    def test_AsyncParallelBatchNode_completion_order_matches_pocketflow(self, arun: Runner) -> None:
        """With different delays, items finish in the same order as on real PocketFlow."""
        delays = [5, 1, 3, 1, 0, 4, 2, 2]

        class Real(real.AsyncParallelBatchNode):
            async def prep_async(self, shared: Any) -> Any:
                return list(range(len(delays)))

            async def exec_async(self, item: int) -> int:
                await ticks(delays[item])
                shared.setdefault("finished", []).append(item)
                return item

        shared: dict[str, Any] = {}
        asyncio.run(Real().run_async(shared))
        ours: dict[str, Any] = {}
        arun(Collect(delays).run_async(ours))
        assert ours["finished"] == shared["finished"]

    def test_AsyncParallelBatchFlow_posts_in_start_order(self, arun: Runner) -> None:
        """Sub-flows with equal delays write shared in param order (programs read them back so)."""

        def program(mod: Any, run: Runner) -> dict[str, Any]:
            class Work(mod.AsyncNode):
                async def exec_async(self, p: Any) -> Any:
                    await ticks(2)
                    return self.params["i"]

                async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> str:
                    shared.setdefault("order", []).append(e)
                    return "next"

            class Tail(mod.Node):
                def post(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                    shared.setdefault("tails", []).append(self.params["i"])

            class Fan(mod.AsyncParallelBatchFlow):
                async def prep_async(self, shared: Any) -> Any:
                    return [{"i": i} for i in range(8)]

            work = Work()
            work - "next" >> Tail()
            shared: dict[str, Any] = {}
            run(Fan(start=work).run_async(shared))
            return shared

        assert program(pf, arun) == program(real, asyncio.run)
        assert program(pf, arun)["order"] == list(range(8))

    def test_parallel_failure_is_bare_and_cancels_siblings(self, arun: Runner) -> None:
        """A ValueError in one item comes out as that ValueError; the others are cancelled, finally run first."""
        cleaned: list[int] = []

        class Fails(pf.AsyncParallelBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return [0, 1, 2]

            async def exec_async(self, item: int) -> int:
                try:
                    if item == 1:
                        await ticks(1)
                        raise ValueError("item 1")
                    await asyncio.Event().wait()
                    return item
                finally:
                    cleaned.append(item)

        with pytest.raises(ValueError, match="item 1"):
            arun(Fails().run_async({}))
        assert sorted(cleaned) == [0, 1, 2]

    def test_max_concurrency_caps_items_in_exec_async(self, arun: Runner) -> None:
        """max_concurrency bounds the items inside exec_async at once; results stay in order."""
        running: list[int] = []
        peak: list[int] = []
        started: list[int] = []

        class Capped(pf.AsyncParallelBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return list(range(10))

            async def exec_async(self, item: int) -> int:
                running.append(item)
                started.append(item)
                peak.append(len(running))
                for _ in range(100):  # stay until the cap is reached (or no item is left to start)
                    if len(running) >= 3 or len(started) == 10:
                        break
                    await asyncio.sleep(0)
                await ticks(item % 3)
                running.remove(item)
                return -item

            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["r"] = e

        shared: dict[str, Any] = {}
        arun(Capped(max_concurrency=3).run_async(shared))
        assert shared["r"] == [-i for i in range(10)]
        assert max(peak) == 3

    def test_cur_retry_is_per_item_in_parallel(self, arun: Runner) -> None:
        """Each parallel item sees its own attempt number, whatever the others do."""

        class Retry(pf.AsyncParallelBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return [0, 1, 2, 3]

            async def exec_async(self, item: int) -> tuple[int, int]:
                attempt = self.cur_retry
                await ticks(3 - item)
                if attempt < item:
                    raise OSError("again")
                assert self.cur_retry == attempt
                return item, attempt

            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["r"] = e

        shared: dict[str, Any] = {}
        arun(Retry(max_retries=4).run_async(shared))
        assert shared["r"] == [(0, 0), (1, 1), (2, 2), (3, 3)]

    def test_asyncio_cancel_cancels_the_flow(self, arun: Runner) -> None:
        """Cancelling the asyncio task awaiting run_async cancels the node's coroutine; its finally runs first."""
        log: list[str] = []
        started: list[asyncio.Event] = []

        class Hang(pf.AsyncNode):
            async def exec_async(self, p: Any) -> None:
                try:
                    log.append("started")
                    started[0].set()
                    await asyncio.Event().wait()
                finally:
                    log.append("finally")

        async def main() -> None:
            started.append(asyncio.Event())
            task = asyncio.ensure_future(pf.AsyncFlow(start=Hang()).run_async({}))
            await started[0].wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            log.append("cancelled")

        arun(main())
        assert log == ["started", "finally", "cancelled"]

    def test_concurrent_and_nested_run_async_share_one_loop(self, arun: Runner) -> None:
        """run_async calls gathered together, and one nested inside a node, all complete."""

        class Inner(pf.AsyncNode):
            async def exec_async(self, p: Any) -> Any:
                await ticks(1)
                return self.params.get("v", 0) + 1

            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared.setdefault("inner", []).append(e)

        class Outer(pf.AsyncNode):
            async def exec_async(self, p: Any) -> Any:
                shared: dict[str, Any] = {}
                await pf.AsyncFlow(start=Inner()).run_async(shared)
                return shared["inner"]

            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["outer"] = e

        async def main() -> list[dict[str, Any]]:
            stores: list[dict[str, Any]] = [{} for _ in range(3)]
            await asyncio.gather(*(Outer().run_async(s) for s in stores[:2]), Inner().run_async(stores[2]))
            return stores

        assert arun(main()) == [{"outer": [1]}, {"outer": [1]}, {"inner": [1]}]

    def test_sync_run_inside_a_node_works(self, arun: Runner) -> None:
        """A sync flow run() from inside an async node (already in a Trio run) completes."""

        class Add(pf.Node):
            def post(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["x"] = shared.get("x", 0) + 1

        class Calls(pf.AsyncNode):
            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> Any:
                return pf.Flow(start=Add()).run(shared)

        shared: dict[str, Any] = {}
        arun(pf.AsyncFlow(start=Calls()).run_async(shared))
        assert shared == {"x": 1}

    def test_sync_nodes_inside_AsyncFlow_run_inline(self, arun: Runner) -> None:
        """An AsyncFlow runs sync nodes and nested sync flows, as PocketFlow does."""

        def program(mod: Any, run: Runner) -> tuple[Any, dict[str, Any]]:
            class S(mod.Node):
                def exec(self, p: Any) -> Any:
                    return self.params["tag"]

                def post(self, shared: dict[str, Any], p: Any, e: Any) -> str:
                    shared.setdefault("seen", []).append(e)
                    return "on"

            class A(mod.AsyncNode):
                async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> str:
                    shared.setdefault("seen", []).append("async")
                    return "on"

            inner = mod.Flow(start=S())
            a = A()
            a - "on" >> inner
            inner - "on" >> S()
            flow = mod.AsyncFlow(start=a)
            flow.set_params({"tag": "t"})
            shared: dict[str, Any] = {}
            return run(flow.run_async(shared)), shared

        assert program(pf, arun) == program(real, asyncio.run) == ("on", {"seen": ["async", "t", "t"]})


def test_run_flow_and_pocketflow_share_the_guest_run() -> None:
    """A trioflow flow (run_flow) and a PocketFlow flow run together on one plain asyncio loop."""
    import trioflow

    class Double(trioflow.Node):
        def prep(self, shared: dict[str, Any]) -> int:
            return int(shared["x"])

        def exec(self, x: int) -> int:
            return 2 * x

        def post(self, shared: dict[str, Any], p: Any, e: int) -> None:
            shared["x"] = e

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        a: dict[str, Any] = {"x": 2}
        b: dict[str, Any] = {}
        await asyncio.gather(aio.run_flow(trioflow.Flow(start=Double()), a), Collect([1, 0]).run_async(b))
        return a, b

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        a, b = runner.run(main())
    assert a == {"x": 4}
    assert b["results"] == [0, 10]


REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="unset")


class TestContext:
    def test_run_async_callers_each_see_their_own_context(self, arun: Runner) -> None:
        """Three concurrent run_async callers: each one's async and sync nodes see its own variables."""

        class Sees(pf.AsyncNode):
            async def prep_async(self, shared: dict[str, Any]) -> None:
                await ticks(1)
                shared["seen"].append(("prep", REQUEST.get()))

            async def exec_async(self, prep_res: Any) -> str:
                await ticks(2)
                return REQUEST.get()

            async def post_async(self, shared: dict[str, Any], p: Any, e: str) -> None:
                shared["seen"] += [("exec", e), ("post", REQUEST.get())]

        class SyncSees(pf.Node):
            def post(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["seen"].append(("sync post", REQUEST.get()))

        first = Sees()
        first >> SyncSees()
        flow = pf.AsyncFlow(start=first)

        async def caller(name: str) -> list[tuple[str, str]]:
            REQUEST.set(name)
            shared: dict[str, Any] = {"seen": []}
            await flow.run_async(shared)
            return shared["seen"]  # type: ignore[no-any-return]

        async def main() -> list[list[tuple[str, str]]]:
            return await asyncio.gather(*(caller(f"request {i}") for i in range(3)))

        for i, seen in enumerate(arun(main())):
            assert seen == [(where, f"request {i}") for where in ("prep", "exec", "post", "sync post")]


class TestMaxConcurrency:
    @pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
    @pytest.mark.parametrize("name", ["AsyncParallelBatchNode", "AsyncParallelBatchFlow"])
    def test_max_concurrency_is_checked_naming_the_node(self, name: str, value: Any) -> None:
        """A cap that is not an int >= 1 (or None) is a ValueError naming the class, as trioflow's own nodes say."""

        kind = type(f"My{name}", (getattr(pf, name),), {})
        with pytest.raises(ValueError, match=rf"My{name}: max_concurrency must be an int >= 1 or None, not {value!r}"):
            kind(max_concurrency=value)

    def test_max_concurrency_set_after_construction_is_checked_at_run(self, arun: Runner) -> None:
        """A cap assigned later is checked when the batch runs; no item runs and post is not called."""
        node = Collect([0, 0])
        node.max_concurrency = 0
        shared: dict[str, Any] = {}
        with pytest.raises(ValueError, match=r"Collect: max_concurrency must be an int >= 1 or None, not 0"):
            arun(node.run_async(shared))
        assert shared == {}


class TestCurRetry:
    def test_AsyncNode_cur_retry_after_a_run_reads_the_last_attempt(self, arun: Runner) -> None:
        """Inside exec_async it counts attempts; after the run it keeps the last one (PocketFlow's head)."""
        seen: list[int] = []

        class Flaky(pf.AsyncNode):
            async def exec_async(self, prep_res: Any) -> str:
                seen.append(self.cur_retry)
                if self.cur_retry < 2:
                    raise OSError("again")
                return "ok"

        node = Flaky(max_retries=4)
        with pytest.raises(AttributeError):
            node.cur_retry  # noqa: B018 - no attempt yet, as in PocketFlow
        arun(node.run_async({}))
        assert seen == [0, 1, 2]
        assert node.cur_retry == 2

    def test_AsyncBatchNode_cur_retry_after_a_run_reads_the_last_items_attempt(self, arun: Runner) -> None:
        """Items one after another: the last attempt of the last item is what stays."""

        class Batch(pf.AsyncBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return [2, 0]

            async def exec_async(self, fails: int) -> int:
                if self.cur_retry < fails:
                    raise OSError("again")
                return self.cur_retry

            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["attempts"] = e

        node = Batch(max_retries=3)
        shared: dict[str, Any] = {}
        arun(node.run_async(shared))
        assert shared["attempts"] == [2, 0]
        assert node.cur_retry == 0

    def test_AsyncParallelBatchNode_cur_retry_is_the_last_attempt_started(self, arun: Runner) -> None:
        """Parallel items keep their own number inside exec_async; the node keeps the last one set."""

        class Parallel(pf.AsyncParallelBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return [1, 0]

            async def exec_async(self, fails: int) -> int:
                attempt = self.cur_retry
                await ticks(3)
                assert self.cur_retry == attempt
                if attempt < fails:
                    raise OSError("again")
                return attempt

            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["attempts"] = e

        node = Parallel(max_retries=2)
        shared: dict[str, Any] = {}
        arun(node.run_async(shared))
        assert shared["attempts"] == [1, 0]
        assert node.cur_retry == 1  # item 0's second attempt started last
