"""adapters.aio: asyncio nodes inside trioflow flows, trioflow flows awaited from asyncio."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
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
from adapters.aio import AsyncioBatchNode, AsyncioNode, AsyncioParallelBatchNode, run_flow


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
        with pytest.raises(ValueError, match="AsyncParallelBatchNode only"):
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
