"""adapters.aio: asyncio nodes inside trioflow flows, trioflow flows awaited from asyncio."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import contextvars
import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pocketflow
import pytest
import trio
import trio.testing
import trio_asyncio

import adapters.pocketflow as pf
import trioflow
from adapters.aio import (
    AsyncioBatchNode,
    AsyncioNode,
    AsyncioParallelBatchNode,
    iterate_asyncio,
    run_flow,
)

ROOT = Path(__file__).resolve().parent.parent


class Double(pocketflow.AsyncNode):
    """An asyncio node: reads shared["x"], sleeps ``delay`` s on asyncio, doubles it."""

    delay = 1.0

    async def prep_async(self, shared: dict[str, Any]) -> Any:
        return shared["x"]

    async def exec_async(self, x: int) -> int:
        await asyncio.sleep(self.delay)
        return 2 * x * int(self.params.get("factor", 1))

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> str:
        shared["x"] = exec_res
        shared.setdefault("loops", []).append(asyncio.get_running_loop())
        return "doubled"


class InstantDouble(Double):
    """Double without the simulated latency, for tests on a real asyncio clock (no real sleeps)."""

    delay = 0.0


class Squares(pocketflow.AsyncParallelBatchNode):
    """Parallel asyncio items that finish in reverse order; tracks how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.peak = 0

    async def prep_async(self, shared: dict[str, Any]) -> list[int]:
        return list(range(shared["n"]))

    async def exec_async(self, i: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(10 - i)
            return i * i
        finally:
            self.running -= 1

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["squares"] = exec_res
        shared["peak"] = self.peak


class Recorder:
    """An async context manager and cleanup log, to see asyncio exits run."""

    def __init__(self) -> None:
        self.log: list[str] = []

    @contextlib.asynccontextmanager
    async def resource(self, name: str) -> AsyncIterator[None]:
        self.log.append(f"enter {name}")
        try:
            yield
        finally:
            await asyncio.sleep(0)  # an await inside the exit: it must still run to the end
            self.log.append(f"exit {name}")


class TestAsyncioNode:
    async def test_AsyncioNode_wires_into_Flow_on_an_open_loop(self, autojump_clock: trio.testing.MockClock) -> None:
        """A wrapped asyncio node routes on its post_async action like any trioflow node."""
        shared: dict[str, Any] = {"x": 3}
        double = AsyncioNode(Double())
        again = AsyncioNode(Double())
        double - "doubled" >> again
        async with trio_asyncio.open_loop() as loop:
            action = await trioflow.Flow(start=double).run(shared)
        assert action == "doubled"
        assert shared["x"] == 12
        assert shared["loops"] == [loop, loop]

    async def test_AsyncioNode_opens_a_loop_when_none_is_current(self, autojump_clock: trio.testing.MockClock) -> None:
        """Without trio_asyncio.open_loop around it, the node opens one for its run."""
        shared: dict[str, Any] = {"x": 1}
        assert await AsyncioNode(Double()).run(shared) == "doubled"
        assert shared["x"] == 2

    async def test_asyncio_time_follows_the_trio_clock(self, autojump_clock: trio.testing.MockClock) -> None:
        """asyncio.sleep inside a wrapped node advances the MockClock, not the wall clock."""
        before = trio.current_time()
        await AsyncioNode(Double()).run({"x": 1})
        assert trio.current_time() - before == pytest.approx(1)

    async def test_AsyncioNode_passes_flow_params_to_a_copy(self, autojump_clock: trio.testing.MockClock) -> None:
        """The flow's params reach the wrapped node through set_params, on a copy."""
        inner = Double()
        flow = trioflow.Flow(start=AsyncioNode(inner), params={"factor": 5})
        shared: dict[str, Any] = {"x": 1}
        await flow.run(shared)
        assert shared["x"] == 10
        assert inner.params == {}

    async def test_AsyncioNode_honours_max_retries_wait_and_fallback(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """PocketFlow's max_retries and wait drive the retries; exec_fallback_async has the last word."""
        calls: list[float] = []

        class Flaky(pocketflow.AsyncNode):
            async def exec_async(self, prep_res: Any) -> Any:
                calls.append(trio.current_time())
                raise OSError("down")

            async def exec_fallback_async(self, prep_res: Any, exc: Exception) -> Any:
                return f"fallback after {exc}"

            async def post_async(self, shared: dict[str, Any], p: Any, e: Any) -> None:
                shared["result"] = e

        shared: dict[str, Any] = {}
        node = AsyncioNode(Flaky(max_retries=3, wait=2))
        assert (node.max_retries, node.wait) == (3, 2)
        await node.run(shared)
        assert shared["result"] == "fallback after down"
        assert [b - a for a, b in itertools.pairwise(calls)] == [pytest.approx(2), pytest.approx(2)]

    async def test_AsyncioNode_max_retries_zero_never_calls_exec(self) -> None:
        """max_retries=0 keeps PocketFlow's meaning: exec_async is not called, post gets None."""
        seen: list[Any] = []

        class Never(pocketflow.AsyncNode):
            async def exec_async(self, prep_res: Any) -> Any:
                raise AssertionError("called")

            async def post_async(self, shared: Any, p: Any, e: Any) -> None:
                seen.append(e)

        await AsyncioNode(Never(max_retries=0)).run({})
        assert seen == [None]

    def test_AsyncioNode_rejects_what_it_cannot_wrap(self) -> None:
        """Non-asyncio objects and flows are refused; a cap on a non-parallel node is a ValueError."""
        with pytest.raises(TypeError, match="coroutine method prep_async"):
            AsyncioNode(object())
        with pytest.raises(TypeError, match="not flows"):
            AsyncioNode(pocketflow.AsyncFlow(start=Double()))
        with pytest.raises(ValueError, match=r"wrap it as adapters\.aio\.AsyncioParallelBatchNode\(Double"):
            AsyncioNode(Double(), max_concurrency=2)


class TestAsyncioBatchNodes:
    async def test_AsyncBatchNode_becomes_sequential_AsyncioBatchNode(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A wrapped AsyncBatchNode runs items one after another, results in order."""

        class Seq(pocketflow.AsyncBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return [3, 1, 2]

            async def exec_async(self, i: int) -> int:
                await asyncio.sleep(i)
                return -i

            async def post_async(self, shared: dict[str, Any], p: Any, e: list[int]) -> None:
                shared["r"] = e

        node = AsyncioNode(Seq())
        assert type(node) is AsyncioBatchNode
        assert isinstance(node, trioflow.BatchNode)
        shared: dict[str, Any] = {}
        start = trio.current_time()
        async with trio_asyncio.open_loop():
            await node.run(shared)
        assert shared["r"] == [-3, -1, -2]
        assert trio.current_time() - start == pytest.approx(6)

    @pytest.mark.parametrize("module", [pocketflow, pf], ids=["pocketflow", "adapters.pocketflow"])
    async def test_AsyncParallelBatchNode_items_go_through_the_capped_pool(
        self, autojump_clock: trio.testing.MockClock, module: Any
    ) -> None:
        """A wrapped AsyncParallelBatchNode keeps input order and never exceeds the wrapper's cap."""

        node = AsyncioNode(Squares() if module is pocketflow else _pf_squares(), max_concurrency=3)
        assert type(node) is AsyncioParallelBatchNode
        assert isinstance(node, trioflow.ParallelBatchNode)
        shared: dict[str, Any] = {"n": 8}
        await node.run(shared)
        assert shared["squares"] == [i * i for i in range(8)]
        assert shared["peak"] == 3


def _pf_squares() -> Any:
    class PfSquares(pf.AsyncParallelBatchNode):
        prep_async = Squares.prep_async
        exec_async = Squares.exec_async  # type: ignore[assignment]
        post_async = Squares.post_async

        def __init__(self) -> None:
            super().__init__()
            self.running = 0
            self.peak = 0

    return PfSquares()


class TestCancellation:
    async def test_trio_cancel_runs_asyncio_finally_before_returning(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """move_on_after cancels the asyncio task; its finally and async-with exit have run when Trio moves on."""
        rec = Recorder()

        class Hang(pocketflow.AsyncNode):
            async def exec_async(self, prep_res: Any) -> None:
                async with rec.resource("session"):
                    try:
                        await asyncio.sleep(3600)
                    finally:
                        rec.log.append("finally")

        async with trio_asyncio.open_loop():
            with trio.move_on_after(5) as scope:
                await trioflow.Flow(start=AsyncioNode(Hang())).run({})
            assert scope.cancelled_caught
            assert rec.log == ["enter session", "finally", "exit session"]

    async def test_sibling_failure_cancels_asyncio_items_first(self, autojump_clock: trio.testing.MockClock) -> None:
        """One failing item cancels the others' asyncio tasks; their cleanup ran before BatchError comes out."""
        rec = Recorder()

        class Items(pocketflow.AsyncParallelBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return [0, 1, 2, 3]

            async def exec_async(self, i: int) -> int:
                async with rec.resource(f"item {i}"):
                    if i == 2:
                        await asyncio.sleep(1)
                        raise KeyError(i)
                    await asyncio.Event().wait()
                    return i

        with pytest.RaisesGroup(pytest.RaisesExc(KeyError)) as info:
            await AsyncioNode(Items(), max_concurrency=4).run({})
        assert isinstance(info.value, trioflow.BatchError)
        assert sorted(rec.log) == sorted([f"{verb} item {i}" for i in range(4) for verb in ("enter", "exit")])


class Accumulate(trioflow.Node):
    """A trioflow node: adds shared["x"] into shared["total"] after a Trio sleep."""

    async def exec(self, prep_res: Any) -> None:
        await trio.lowlevel.checkpoint()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["total"] = shared.get("total", 0) + shared["x"]


def _plain_asyncio(coro: Any) -> Any:
    """asyncio.run on a plain asyncio loop (trio_asyncio's policy would build a trio-asyncio one)."""
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(coro)


class TestRunFlow:
    def test_run_flow_from_asyncio_run_uses_the_callers_loop(self) -> None:
        """A trioflow flow awaited from asyncio code runs; its asyncio nodes run on the caller's loop."""
        wrapped = AsyncioNode(InstantDouble())
        wrapped - "doubled" >> Accumulate()
        flow = trioflow.Flow(start=wrapped)

        async def main() -> tuple[Any, dict[str, Any], asyncio.AbstractEventLoop]:
            shared: dict[str, Any] = {"x": 2}
            action = await run_flow(flow, shared)
            return action, shared, asyncio.get_running_loop()

        action, shared, loop = _plain_asyncio(main())
        assert action is None
        assert shared["x"] == shared["total"] == 4
        assert shared["loops"] == [loop]

    def test_run_flow_calls_run_concurrently_on_one_loop(self) -> None:
        """Several run_flow calls gathered on one loop all complete (they share one Trio guest run)."""
        flow = trioflow.Flow(start=Accumulate())

        async def main() -> list[dict[str, Any]]:
            stores: list[dict[str, Any]] = [{"x": i} for i in range(5)]
            await asyncio.gather(*(run_flow(flow, s) for s in stores))
            await run_flow(flow, stores[0])  # and again, after that run has ended
            return stores

        assert _plain_asyncio(main()) == [{"x": i, "total": i * (2 if i == 0 else 1)} for i in range(5)]

    @pytest.mark.parametrize("loop_kind", ["asyncio", "trio-asyncio"])
    def test_asyncio_cancel_cancels_the_flow(self, loop_kind: str) -> None:
        """Cancelling the asyncio caller cancels the flow; Trio and asyncio cleanups run before CancelledError."""
        rec = Recorder()

        class TrioWait(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                try:
                    rec.log.append("trio waiting")
                    await trio.sleep_forever()
                finally:
                    rec.log.append("trio finally")

        class AioWait(pocketflow.AsyncNode):
            async def exec_async(self, prep_res: Any) -> None:
                async with rec.resource("aio"):
                    await asyncio.Event().wait()

            async def post_async(self, shared: Any, p: Any, e: Any) -> None:
                return None

        both = trioflow.ParallelBatchNode()
        both.exec = lambda item: item()  # type: ignore[method-assign, assignment]
        both.prep = lambda shared: [  # type: ignore[method-assign]
            lambda: TrioWait().run({}),
            lambda: AsyncioNode(AioWait()).run({}),
        ]

        async def main() -> None:
            task = asyncio.ensure_future(run_flow(trioflow.Flow(start=both), {}))
            for _ in range(1000):  # until both sides are waiting
                if len(rec.log) == 2:
                    break
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            rec.log.append("cancelled")

        if loop_kind == "asyncio":
            _plain_asyncio(main())
        else:
            with asyncio.Runner(loop_factory=_trio_asyncio_loop) as runner:
                runner.run(main())
        assert rec.log[-1] == "cancelled"
        assert sorted(rec.log[:-1]) == ["enter aio", "exit aio", "trio finally", "trio waiting"]

    def test_run_flow_sibling_failure_cancels_asyncio_items_on_the_callers_loop(self) -> None:
        """Under run_flow, a failing item cancels its siblings' asyncio tasks; cleanups ran before BatchError."""
        rec = Recorder()

        class Items(pocketflow.AsyncParallelBatchNode):
            async def prep_async(self, shared: Any) -> list[int]:
                return [0, 1, 2]

            async def exec_async(self, i: int) -> int:
                async with rec.resource(f"item {i}"):
                    if i == 1:
                        await asyncio.sleep(0)
                        raise KeyError(i)
                    await asyncio.Event().wait()
                    return i

        with pytest.RaisesGroup(pytest.RaisesExc(KeyError)):
            _plain_asyncio(run_flow(trioflow.Flow(start=AsyncioNode(Items())), {}))
        assert sorted(rec.log) == sorted([f"{verb} item {i}" for i in range(3) for verb in ("enter", "exit")])

    def test_run_flow_refuses_non_nodes(self) -> None:
        """run_flow takes a trioflow node or flow only."""
        with pytest.raises(TypeError, match="trioflow Node"):
            _plain_asyncio(run_flow(Double(), {}))


def _trio_asyncio_loop() -> asyncio.AbstractEventLoop:
    from trio_asyncio._sync import SyncTrioEventLoop

    return SyncTrioEventLoop()  # type: ignore[no-any-return]


def test_trioflow_never_imports_asyncio_or_the_adapters() -> None:
    """The arrows go one way: no trioflow module imports asyncio, trio_asyncio or adapters."""
    package = Path(trioflow.__file__).parent
    imported: set[str] = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"asyncio", "trio_asyncio", "adapters"}), imported


async def test_run_bridge_reports_both_costs() -> None:
    """benchmarks.bridge.run_bridge measures the wrapped node and aio_as_trio, per call (no timing asserted)."""
    from benchmarks.bridge import run_bridge

    result = await run_bridge(20, rounds=1)
    assert set(result) == {"trioflow-aio", "aio_as_trio"}
    assert all(0 < seconds < 1 for seconds in result.values())


# -- objects that are not PocketFlow classes -------------------------------------------


class PlainSquares:
    """Squares' methods on a class of its own: a parallel batch by intent, not by class."""

    prep_async = Squares.prep_async
    exec_async = Squares.exec_async
    post_async = Squares.post_async

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0


class TestBatchKinds:
    async def test_AsyncioParallelBatchNode_wraps_an_object_that_is_not_a_PocketFlow_class(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The kind given by constructing it: items through the capped pool, results in input order."""
        node = AsyncioParallelBatchNode(PlainSquares(), max_concurrency=3)
        shared: dict[str, Any] = {"n": 8}
        async with trio_asyncio.open_loop():
            await node.run(shared)
        assert shared["squares"] == [i * i for i in range(8)]
        assert shared["peak"] == 3

    async def test_AsyncioBatchNode_wraps_an_object_that_is_not_a_PocketFlow_class(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """AsyncioBatchNode(obj) runs exec_async once per item, one after another."""
        shared: dict[str, Any] = {"n": 3}
        start = trio.current_time()
        async with trio_asyncio.open_loop():
            await AsyncioBatchNode(PlainSquares()).run(shared)
        assert shared == {"n": 3, "squares": [0, 1, 4], "peak": 1}
        assert trio.current_time() - start == pytest.approx(10 + 9 + 8)

    def test_AsyncioNode_cap_on_an_unknown_kind_points_to_AsyncioParallelBatchNode(self) -> None:
        """A cap on an object whose kind cannot be inferred says which class to construct instead."""
        with pytest.raises(ValueError) as info:
            AsyncioNode(PlainSquares(), max_concurrency=32)
        assert "adapters.aio.AsyncioParallelBatchNode(PlainSquares(...), max_concurrency=...)" in str(info.value)

    def test_AsyncioParallelBatchNode_checks_its_cap(self) -> None:
        """A bad cap is refused at construction, naming the node, as for trioflow's own parallel nodes."""
        with pytest.raises(ValueError, match=r"AsyncioParallelBatchNode: max_concurrency must be an int >= 1"):
            AsyncioParallelBatchNode(PlainSquares(), max_concurrency=0)


class TestMissingExtra:
    async def test_AsyncioNode_without_trio_asyncio_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With trio-asyncio missing, the error says which extra to install and how, from a clone."""
        monkeypatch.setitem(sys.modules, "trio_asyncio", None)  # import trio_asyncio now fails
        with pytest.raises(ModuleNotFoundError) as info:
            await AsyncioNode(InstantDouble()).run({"x": 1})
        assert "'asyncio' extra" in str(info.value)
        assert 'pip install -e ".[asyncio]"' in str(info.value)
        assert info.value.name == "trio_asyncio"


# -- context variables -----------------------------------------------------------------

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="unset")
STEP: contextvars.ContextVar[str] = contextvars.ContextVar("step", default="unset")


class TrioSeesRequest(trioflow.Node):
    """A Trio node that records the request id its prep and exec see."""

    async def prep(self, shared: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        shared["seen"].append(("trio prep", REQUEST.get()))

    async def exec(self, prep_res: Any) -> str:
        await trio.lowlevel.checkpoint()
        return REQUEST.get()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["seen"].append(("trio exec", exec_res))


class AioSeesRequest(pocketflow.AsyncNode):
    """An asyncio node that records the request id its three coroutines see."""

    async def prep_async(self, shared: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        shared["seen"].append(("aio prep", REQUEST.get()))

    async def exec_async(self, prep_res: Any) -> str:
        await asyncio.sleep(0)
        return REQUEST.get()

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["seen"] += [("aio exec", exec_res), ("aio post", REQUEST.get())]


class Remembers(pocketflow.AsyncNode):
    """prep_async sets a context variable; exec_async and post_async report what they see."""

    async def prep_async(self, shared: dict[str, Any]) -> None:
        STEP.set("set in prep_async")

    async def exec_async(self, prep_res: Any) -> str:
        await asyncio.sleep(0)
        return STEP.get()

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["exec saw"] = exec_res
        shared["post saw"] = STEP.get()


class TestContext:
    @pytest.mark.parametrize("where", ["open_loop", "own loop"])
    async def test_AsyncioNode_coroutines_of_one_run_share_one_context(
        self, autojump_clock: trio.testing.MockClock, where: str
    ) -> None:
        """A variable set in prep_async is seen by exec_async and post_async, as in PocketFlow."""
        shared: dict[str, Any] = {}
        async with trio_asyncio.open_loop() if where == "open_loop" else contextlib.nullcontext():
            await trioflow.Flow(start=AsyncioNode(Remembers())).run(shared)
        assert shared == {"exec saw": "set in prep_async", "post saw": "set in prep_async"}
        assert STEP.get() == "unset"  # the run's context is a copy: the Trio caller's is untouched

    def test_AsyncioNode_coroutines_share_one_context_under_run_flow(self) -> None:
        """The same on the caller's own asyncio loop, under run_flow."""
        shared: dict[str, Any] = {}
        _plain_asyncio(run_flow(trioflow.Flow(start=AsyncioNode(Remembers())), shared))
        assert shared == {"exec saw": "set in prep_async", "post saw": "set in prep_async"}

    async def test_AsyncioParallelBatchNode_items_start_from_a_copy_kept_across_retries(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Each item sees prep's variables and keeps its own across retries; post sees none of the items'."""
        attempts: dict[int, int] = {}

        class Items(pocketflow.AsyncParallelBatchNode):
            async def prep_async(self, shared: dict[str, Any]) -> list[int]:
                STEP.set("prep")
                return [0, 1, 2]

            async def exec_async(self, i: int) -> tuple[int, str]:
                attempts[i] = attempts.get(i, 0) + 1
                seen = STEP.get()
                STEP.set(f"item {i}")
                await asyncio.sleep(3 - i)
                if attempts[i] == 1:
                    raise OSError("first attempt fails")
                return i, seen

            async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["items saw"] = exec_res
                shared["post saw"] = STEP.get()

        shared: dict[str, Any] = {}
        async with trio_asyncio.open_loop():
            await AsyncioNode(Items(max_retries=2), max_concurrency=2).run(shared)
        assert shared["items saw"] == [(0, "item 0"), (1, "item 1"), (2, "item 2")]
        assert shared["post saw"] == "prep"

    def test_run_flow_callers_each_see_their_own_context(self) -> None:
        """Three concurrent callers on one loop: each one's Trio and asyncio nodes see its own variables."""
        flow = trioflow.Flow(start=TrioSeesRequest())
        flow.start_node >> AsyncioNode(AioSeesRequest())  # type: ignore[operator]

        async def caller(name: str) -> list[tuple[str, str]]:
            REQUEST.set(name)
            shared: dict[str, Any] = {"seen": []}
            await run_flow(flow, shared)
            return shared["seen"]  # type: ignore[no-any-return]

        async def main() -> list[list[tuple[str, str]]]:
            return await asyncio.gather(*(caller(f"request {i}") for i in range(3)))

        for i, seen in enumerate(_plain_asyncio(main())):
            assert seen == [
                (where, f"request {i}") for where in ("trio prep", "trio exec", "aio prep", "aio exec", "aio post")
            ]


# -- instrument events -------------------------------------------------------------


class Recording(trioflow.Instrument):
    """Records every event with the node it names."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def node_started(self, node: trioflow.Node) -> None:
        self.events.append(("node_started", node))

    def batch_started(self, node: trioflow.Node, total: int | None) -> None:
        self.events.append(("batch_started", node))

    def item_started(self, node: trioflow.Node, index: int) -> None:
        self.events.append(("item_started", node))

    def item_finished(self, node: trioflow.Node, index: int, error: BaseException | None) -> None:
        self.events.append(("item_finished", node))

    def node_finished(self, node: trioflow.Node, action: str | None, error: BaseException | None) -> None:
        self.events.append(("node_finished", node))


class TestInstrumentEvents:
    async def test_AsyncioParallelBatchNode_events_name_one_node(self, autojump_clock: trio.testing.MockClock) -> None:
        """node_started, batch_started, the item events and node_finished of one run name the same node."""
        recording = Recording()
        flow = trioflow.Flow(start=AsyncioNode(Squares(), max_concurrency=3))
        async with trio_asyncio.open_loop():
            with trioflow.instrumented(recording):
                await flow.run({"n": 4})
        named = [(event, node) for event, node in recording.events if node is not flow]
        assert [event for event, _ in named].count("item_finished") == 4
        assert len({id(node) for _, node in named}) == 1
        assert isinstance(named[0][1], AsyncioParallelBatchNode)
        assert (named[0][0], named[1][0], named[-1][0]) == ("node_started", "batch_started", "node_finished")


# -- BaseExceptions from asyncio code --------------------------------------------------


class TestBaseExceptions:
    @pytest.mark.parametrize("error", [asyncio.CancelledError, GeneratorExit])
    @pytest.mark.parametrize("where", ["open_loop", "own loop"])
    async def test_AsyncioNode_BaseException_from_asyncio_comes_out_bare(
        self, where: str, error: type[BaseException]
    ) -> None:
        """CancelledError or GeneratorExit raised by the asyncio code leaves node.run bare, not in groups."""

        class Raises(pocketflow.AsyncNode):
            async def exec_async(self, prep_res: Any) -> None:
                raise error("from asyncio")

        async with trio_asyncio.open_loop() if where == "open_loop" else contextlib.nullcontext():
            with pytest.raises(error) as info:
                await AsyncioNode(Raises()).run({})
        assert type(info.value) is error
        assert info.value.args == ("from asyncio",)

    @pytest.mark.parametrize(
        "variant",
        ["open_loop", "own loop", "call_asyncio", "iterate_asyncio", "run_flow", "run_flow on trio-asyncio",
         "pocketflow", "pocketflow on trio-asyncio"],
    )
    def test_KeyboardInterrupt_and_SystemExit_from_asyncio_come_out_bare(self, variant: str) -> None:
        """Raised in asyncio code, both leave the crossing bare (trio-asyncio alone hangs): in a subprocess, bounded."""
        try:
            done = subprocess.run(
                [sys.executable, "-c", INTERRUPT_SCRIPT, variant],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{variant}: hung (killed after {exc.timeout} s); output so far: {exc.stdout!r}")
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.splitlines() == [
            "KeyboardInterrupt bare ('from asyncio',)",
            "SystemExit bare ('from asyncio',)",
        ], done.stderr[-3000:]


# Raises KeyboardInterrupt, then SystemExit, from asyncio code reached one way
# (argv[1]); prints how each came out.  A hang is the failure this guards against.
INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import pocketflow, trio, trio_asyncio
    from trio_asyncio._sync import SyncTrioEventLoop
    import adapters.aio as aio
    import adapters.pocketflow as pf
    import trioflow

    variant = sys.argv[1]

    for error in (KeyboardInterrupt, SystemExit):

        async def raises(*_):
            await asyncio.sleep(0)
            raise error("from asyncio")

        async def generator():
            await raises()
            yield

        Raises = type("Raises", (pocketflow.AsyncNode,), {"exec_async": raises})
        PfRaises = type("PfRaises", (pf.AsyncNode,), {"exec_async": raises})
        flow = trioflow.Flow(start=aio.AsyncioNode(Raises()))

        def report(exc):
            print(type(exc).__name__, "bare", exc.args, flush=True)

        async def in_trio():
            if variant == "own loop":  # the node's own loop: bare out of run()
                try:
                    await aio.AsyncioNode(Raises()).run({})
                except error as exc:
                    report(exc)
                return
            async with trio_asyncio.open_loop():  # the caller's loop: bare inside it
                try:
                    if variant == "open_loop":
                        await aio.AsyncioNode(Raises()).run({})
                    elif variant == "call_asyncio":
                        await aio.call_asyncio(raises)
                    else:
                        async with aio.iterate_asyncio(generator()) as items:
                            async for _ in items:
                                pass
                except error as exc:
                    report(exc)

        try:
            if variant == "run_flow":
                with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                    runner.run(aio.run_flow(flow, {}))
            elif variant == "run_flow on trio-asyncio":
                with asyncio.Runner(loop_factory=SyncTrioEventLoop) as runner:
                    runner.run(aio.run_flow(flow, {}))
            elif variant == "pocketflow":
                with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                    runner.run(pf.AsyncFlow(start=PfRaises()).run_async({}))
            elif variant == "pocketflow on trio-asyncio":
                with asyncio.Runner(loop_factory=SyncTrioEventLoop) as runner:
                    runner.run(pf.AsyncFlow(start=PfRaises()).run_async({}))
            else:
                trio.run(in_trio)
        except error as exc:
            report(exc)
        except BaseException as exc:
            print(type(exc).__name__, "instead of", error.__name__, repr(exc), flush=True)
    """
)


# -- the guest run -----------------------------------------------------------------


class TrioToken(trioflow.Node):
    """Records the Trio run it runs in (its token)."""

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared.setdefault("tokens", []).append(trio.lowlevel.current_trio_token())


class TestGuestRun:
    def test_run_flow_calls_share_one_lasting_guest_run(self) -> None:
        """One after another on one loop, the calls run in one Trio run: no start-up cost per call."""
        flow = trioflow.Flow(start=TrioToken())

        async def main() -> list[Any]:
            shared: dict[str, Any] = {}
            for _ in range(3):
                await run_flow(flow, shared)
                await asyncio.sleep(0)
            return shared["tokens"]  # type: ignore[no-any-return]

        tokens = _plain_asyncio(main())
        assert len(tokens) == 3 and tokens[0] is tokens[1] is tokens[2]

    def test_loop_close_ends_the_guest_run(self) -> None:
        """run_until_complete then close(): the Trio run is gone, and a flow still running was cancelled first."""
        log: list[str] = []

        class Forever(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                try:
                    log.append("started")
                    await trio.sleep_forever()
                finally:
                    log.append("trio finally ran")

        left_running: list[asyncio.Future[Any]] = []

        async def main() -> None:
            left_running.append(asyncio.ensure_future(run_flow(trioflow.Flow(start=Forever()), {})))
            await run_flow(trioflow.Flow(start=TrioToken()), {})

        loop = asyncio.SelectorEventLoop()
        loop.run_until_complete(main())
        assert log == ["started"]
        loop.close()
        assert log == ["started", "trio finally ran"]
        assert not trio.lowlevel.in_trio_run()
        trio.run(trio.sleep, 0)  # this thread can start a Trio run again


    def test_a_loop_that_cannot_be_wrapped_gets_a_guest_run_per_call(self) -> None:
        """Where loop.close cannot be wrapped, the guest run ends whenever no call is left."""
        flow = trioflow.Flow(start=TrioToken())
        shared: dict[str, Any] = {}
        loop = SealedLoop()
        try:
            for _ in range(2):
                loop.run_until_complete(run_flow(flow, shared))
                assert not trio.lowlevel.in_trio_run()
        finally:
            loop.close()
        assert shared["tokens"][0] is not shared["tokens"][1]


class SealedLoop(asyncio.SelectorEventLoop):
    """A loop whose ``close`` cannot be replaced on the instance."""

    @property
    def close(self) -> Any:
        return super().close


# -- streams -----------------------------------------------------------------------


class TestIterateAsyncio:
    async def test_iterate_asyncio_yields_the_items_in_order_in_one_context(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Every item of an asyncio generator reaches Trio in order; its steps share one context."""

        async def numbers() -> AsyncIterator[Any]:
            STEP.set("set by the first step")
            for i in range(3):
                await asyncio.sleep(1)
                yield i
            yield STEP.get()

        async with trio_asyncio.open_loop(), iterate_asyncio(numbers()) as items:
            got = [item async for item in items]
        assert got == [0, 1, 2, "set by the first step"]
        assert trio.current_time() == pytest.approx(3)

    async def test_iterate_asyncio_trio_cancel_cancels_the_pending_step(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A Trio cancel while waiting for an item cancels the asyncio step: the generator's finally runs first."""
        log: list[Any] = []

        async def ticks() -> AsyncIterator[int]:
            try:
                for i in itertools.count():
                    await asyncio.sleep(1)
                    yield i
            finally:
                log.append(("finally, in an asyncio task", asyncio.current_task() is not None))

        got: list[int] = []
        async with trio_asyncio.open_loop():
            with trio.move_on_after(2.5) as scope:
                async with iterate_asyncio(ticks()) as items:
                    async for i in items:
                        got.append(i)
            assert log == [("finally, in an asyncio task", True)]
        assert scope.cancelled_caught
        assert got == [0, 1]

    def test_iterate_asyncio_streams_chunks_from_a_loopback_client(self) -> None:
        """A Trio node under run_flow reads every chunk an asyncio stream client yields from a real socket."""
        chunks = [f"chunk {i}" for i in range(5)]
        shared, log, server = _stream(ChunkServer(chunks), limit=None)
        assert shared["got"] == chunks
        assert log == ["client closed, in an asyncio task"]
        assert server.hung_up.is_set()

    def test_iterate_asyncio_early_exit_closes_the_client_on_asyncio(self) -> None:
        """break after two chunks: the client's finally runs in an asyncio task before the block exits."""
        shared, _, server = _stream(ChunkServer([f"chunk {i}" for i in range(5)], hold=True), limit=2)
        assert shared["got"] == ["chunk 0", "chunk 1"]
        assert shared["log at exit"] == ["client closed, in an asyncio task"]
        assert server.hung_up.is_set()

    def test_iterate_asyncio_asyncio_cancel_of_run_flow_closes_the_client(self) -> None:
        """Cancelling the asyncio caller while a Trio node waits for a chunk closes the client on asyncio."""
        server = ChunkServer(["chunk 0", "chunk 1"], hold=True)
        log: list[str] = []

        async def main() -> None:
            asking = asyncio.Event()
            listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
            async with listener:
                port = listener.sockets[0].getsockname()[1]
                shared = {"port": port, "limit": None, "log": log, "asking": (2, asking)}
                task = asyncio.ensure_future(run_flow(trioflow.Flow(start=ConsumeStream()), shared))
                await asyncio.wait_for(asking.wait(), 10)  # the Trio node waits for a third chunk
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert log == ["client closed, in an asyncio task"]
                await asyncio.wait_for(server.hung_up.wait(), 10)

        _plain_asyncio(main())


class ChunkServer:
    """A loopback server that streams lines to a client, then (``hold``) waits for it to hang up."""

    def __init__(self, chunks: list[str], hold: bool = False) -> None:
        self.chunks = chunks
        self.hold = hold
        self.hung_up = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for chunk in self.chunks:
                writer.write(chunk.encode() + b"\n")
                await writer.drain()
            if self.hold:
                await reader.read()  # b"" once the client has closed its end
            else:
                writer.write_eof()
                await reader.read()
        finally:
            self.hung_up.set()
            writer.close()


async def stream_lines(
    port: int, log: list[str], asking: tuple[int, asyncio.Event] | None = None
) -> AsyncIterator[str]:
    """A streaming client written for asyncio: yields the lines a server sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for index in itertools.count():
            if asking is not None and asking[0] == index:
                asking[1].set()
            line = await reader.readline()
            if not line:
                return
            yield line.decode().rstrip("\n")
    finally:
        log.append("client closed" + (", in an asyncio task" if asyncio.current_task() is not None else ""))
        writer.close()
        await writer.wait_closed()


class ConsumeStream(trioflow.Node):
    """A Trio node that reads an asyncio stream client through iterate_asyncio."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared

    async def exec(self, shared: dict[str, Any]) -> list[str]:
        got: list[str] = []
        async with iterate_asyncio(stream_lines(shared["port"], shared["log"], shared.get("asking"))) as lines:
            async for line in lines:
                got.append(line)
                if len(got) == shared["limit"]:
                    break
        shared["log at exit"] = list(shared["log"])
        return got

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> None:
        shared["got"] = exec_res


def _stream(server: ChunkServer, limit: int | None) -> tuple[dict[str, Any], list[str], ChunkServer]:
    """Serve ``server`` on 127.0.0.1 and run a ConsumeStream flow against it under run_flow."""
    log: list[str] = []

    async def main() -> dict[str, Any]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        async with listener:
            shared = {"port": listener.sockets[0].getsockname()[1], "limit": limit, "log": log}
            await run_flow(trioflow.Flow(start=ConsumeStream()), shared)
            await asyncio.wait_for(server.hung_up.wait(), 10)
            return shared

    return _plain_asyncio(main()), log, server


# -- typing --------------------------------------------------------------------------

USER_PROGRAM = textwrap.dedent(
    """
    import asyncio
    from typing import Any

    import trio

    import adapters.aio
    import adapters.pocketflow as pocketflow
    import trioflow


    class Shout(pocketflow.AsyncNode):
        async def exec_async(self, prep_res: Any) -> str:
            return "HI"


    class Plain:
        async def prep_async(self, shared: dict[str, Any]) -> list[int]:
            return [1, 2]

        async def exec_async(self, item: int) -> int:
            return item

        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared["r"] = exec_res


    async def chunks() -> Any:
        yield "a"


    async def in_trio() -> list[str]:
        async with adapters.aio.iterate_asyncio(chunks()) as stream:
            return [chunk async for chunk in stream]


    async def main() -> str | None:
        shared: dict[str, Any] = {}
        await Shout().run_async(shared)
        node: adapters.aio.AsyncioParallelBatchNode = adapters.aio.AsyncioParallelBatchNode(Plain(), max_concurrency=2)
        return await adapters.aio.run_flow(trioflow.Flow(start=node), shared)


    action: str | None = asyncio.run(main())
    print(trio.run(in_trio))
    """
)


@pytest.mark.parametrize("how", ["installed", "as source"])
def test_adapters_type_check_under_a_users_mypy_strict(tmp_path: Path, how: str) -> None:
    """A user's program importing adapters.aio and adapters.pocketflow passes mypy --strict (py.typed shipped).

    ``installed``: adapters found as the installed package (its py.typed
    marker); ``as source``: on MYPYPATH, so its own code is checked under the
    user's flags, with no project config.
    """
    (tmp_path / "program.py").write_text(USER_PROGRAM, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    if how == "as source":
        env["MYPYPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "program.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (ROOT / "adapters" / "py.typed").exists()


def test_run_pocketflow_costs_reports_each_figure_for_both_systems() -> None:
    """benchmarks.bridge.run_pocketflow_costs measures each figure on pocketflow and the adapter (no timing checked)."""
    from benchmarks.bridge import run_pocketflow_costs

    result = run_pocketflow_costs(20, rounds=1)
    figures = {key.split(": ")[0] for key in result}
    assert len(figures) == 4
    assert set(result) == {f"{f}: {s}" for f in figures for s in ("pocketflow", "adapters.pocketflow")}
    assert all(0 < seconds < 1 for seconds in result.values())
