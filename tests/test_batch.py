"""Sequential batches: BatchNode and BatchFlow (the parallel pool has tests/test_parallel.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioflow
from tests.strategies import batch_items, params_dicts


async def agen(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        await trio.lowlevel.checkpoint()
        yield item


def gen(items: list[Any]) -> Iterator[Any]:
    yield from items


SOURCES: dict[str, Callable[[list[Any]], Any]] = {"list": list, "generator": gen, "async_iterator": agen}


class Tag(trioflow.BatchNode):
    """exec tags each item; post stores the list; prep wraps ``shared["items"]`` with ``shared["source"]``."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return SOURCES[shared["source"]](shared["items"])

    async def exec(self, item: Any) -> tuple[str, Any]:
        await trio.lowlevel.checkpoint()
        return ("done", item)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        shared["results"] = exec_res
        return "posted"


class TestBatchNode:
    @given(items=batch_items, source=st.sampled_from(sorted(SOURCES)))
    def test_BatchNode_runs_exec_per_item_in_order(self, items: list[Any], source: str) -> None:
        """prep may return a list, a generator or an async iterator; post gets the results in input order."""
        shared: dict[str, Any] = {"items": items, "source": source}
        assert trioflow.run(Tag(), shared) == "posted"
        assert shared["results"] == [("done", item) for item in items]

    async def test_BatchNode_prep_None_means_no_items(self) -> None:
        """prep returning None runs no exec and posts an empty list (PocketFlow's `items or []`)."""

        class Nothing(Tag):
            def prep(self, shared: dict[str, Any]) -> None:
                return None

            async def exec(self, item: Any) -> Any:
                raise AssertionError("exec must not run")

        shared: dict[str, Any] = {}
        await Nothing().run(shared)
        assert shared["results"] == []

    async def test_BatchNode_runs_items_one_at_a_time_and_pulls_lazily(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Items do not overlap, and a generator is pulled only when the previous item is done."""
        events: list[str] = []

        class Sequential(trioflow.BatchNode):
            def prep(self, shared: Any) -> Iterator[int]:
                for i in range(4):
                    events.append(f"pull {i}")
                    yield i

            async def exec(self, item: int) -> int:
                events.append(f"start {item}")
                await trio.sleep(4 - item)
                events.append(f"end {item}")
                return item

        await Sequential().run({})
        assert events == [e for i in range(4) for e in (f"pull {i}", f"start {i}", f"end {i}")]

    @given(items=st.lists(st.integers(), min_size=1, max_size=12), data=st.data())
    def test_BatchNode_failure_propagates_bare_with_a_note_naming_the_index(
        self, items: list[int], data: st.DataObject
    ) -> None:
        """The exception from exec propagates itself (no group) with a note naming the item; no post."""
        bad = data.draw(st.integers(0, len(items) - 1), label="failing index")
        raised: list[Exception] = []
        ran: list[int] = []

        class Failing(trioflow.BatchNode):
            def prep(self, shared: Any) -> list[int]:
                return items

            def exec(self, item: int) -> int:
                ran.append(item)
                if len(ran) - 1 == bad:
                    raised.append(KeyError(item))
                    raise raised[-1]
                return item

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["posted"] = True

        shared: dict[str, Any] = {}
        with pytest.raises(KeyError) as info:
            trioflow.run(Failing(), shared)
        assert info.value is raised[0]
        assert f"raised by item {bad} of Failing" in info.value.__notes__
        assert len(ran) == bad + 1
        assert "posted" not in shared

    async def test_BatchNode_each_item_has_its_own_retries(self) -> None:
        """Every item gets max_retries attempts of its own; cur_retry restarts at 0 per item."""
        attempts: list[tuple[str, int]] = []

        class Flaky(trioflow.BatchNode):
            def prep(self, shared: Any) -> list[str]:
                return ["a", "b", "c"]

            def exec(self, item: str) -> str:
                attempts.append((item, self.cur_retry))
                if self.cur_retry < 2:
                    raise ValueError(item)
                return item.upper()

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> None:
                shared["out"] = exec_res

        shared: dict[str, Any] = {}
        await Flaky(max_retries=3).run(shared)
        assert shared["out"] == ["A", "B", "C"]
        assert attempts == [(item, k) for item in "abc" for k in range(3)]

    async def test_BatchNode_exec_fallback_stands_in_per_item(self) -> None:
        """exec_fallback's return fills the failed item's slot, the others keep theirs."""

        class Half(trioflow.BatchNode):
            def prep(self, shared: Any) -> range:
                return range(4)

            def exec(self, item: int) -> int:
                if item % 2:
                    raise ValueError(item)
                return item

            def exec_fallback(self, prep_res: int, exc: Exception) -> str:
                return f"fallback {prep_res}"

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
                shared["out"] = exec_res

        shared: dict[str, Any] = {}
        await Half().run(shared)
        assert shared["out"] == [0, "fallback 1", 2, "fallback 3"]

    @pytest.mark.parametrize("kind", [trioflow.BatchNode, trioflow.ParallelBatchNode])
    @pytest.mark.parametrize("bad", [5, 3.5, object()])
    async def test_BatchNode_prep_returning_a_non_iterable_is_a_TypeError_naming_the_node(
        self, kind: type[trioflow.Node], bad: object
    ) -> None:
        """A batch prep that returns something not iterable is refused, naming the node class."""

        class MyBatch(kind):  # type: ignore[valid-type,misc]
            def prep(self, shared: Any) -> object:
                return bad

        with pytest.raises(TypeError, match=r"MyBatch\.prep returned .* not iterable"):
            await MyBatch().run({})

    async def test_BatchNode_cancelled_from_outside_stops_between_items(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An outside cancel stops the batch in the running item; no later item starts and post is not called."""
        started: list[int] = []

        class Slow(trioflow.BatchNode):
            def prep(self, shared: Any) -> range:
                return range(10)

            async def exec(self, item: int) -> None:
                started.append(item)
                await trio.sleep(1)

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["posted"] = True

        shared: dict[str, Any] = {}
        with trio.move_on_after(2.5):
            await Slow(max_retries=3).run(shared)
        assert started == [0, 1, 2]
        assert "posted" not in shared


class Leaf(trioflow.Node):
    """Records its params and the time it starts and ends."""

    def prep(self, shared: dict[str, Any]) -> None:
        shared.setdefault("log", []).append(("start", dict(self.params), trio.current_time()))

    async def exec(self, prep_res: Any) -> None:
        await trio.sleep(1)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["log"].append(("end", dict(self.params), trio.current_time()))


class TestBatchFlow:
    @pytest.mark.parametrize("source", sorted(SOURCES))
    async def test_BatchFlow_runs_the_sub_flow_once_per_param_set_in_order(
        self, source: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        """prep's param dicts (list, generator or async iterator) each run the sub-flow, one after another."""
        param_sets = [{"image": img, "filter": f} for img in ("cat", "dog") for f in ("grey", "blur")]

        class Grid(trioflow.BatchFlow):
            def prep(self, shared: Any) -> Any:
                return SOURCES[source](param_sets)

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
                shared["post"] = exec_res
                return "grid_done"

        shared: dict[str, Any] = {}
        assert await Grid(start=Leaf()).run(shared) == "grid_done"
        assert shared["log"] == [
            (what, p, float(i + (what == "end"))) for i, p in enumerate(param_sets) for what in ("start", "end")
        ]
        assert shared["post"] == [None] * len(param_sets)  # each run's last action

    async def test_BatchFlow_post_gets_prep_result_and_each_runs_last_action(self) -> None:
        """BatchFlow.post receives (shared, prep_res, [last action of each run]); its default returns None."""
        sets = [{"x": 1}, {"x": 2}]

        class Last(trioflow.Node):
            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> str:
                return f"ran {self.params['x']}"

        class Check(trioflow.BatchFlow):
            def prep(self, shared: Any) -> list[dict[str, int]]:
                return sets

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["post"] = (prep_res, exec_res)

        shared: dict[str, Any] = {}
        assert await Check(start=Last()).run(shared) is None
        assert shared["post"][0] is sets
        assert shared["post"][1] == ["ran 1", "ran 2"]
        assert await trioflow.BatchFlow(start=Last()).run({}) is None

    async def test_BatchFlow_prep_None_runs_nothing(self) -> None:
        """A BatchFlow whose prep returns None (the default) runs no sub-flow and still posts."""
        shared: dict[str, Any] = {}
        assert await trioflow.BatchFlow(start=Leaf()).run(shared) is None
        assert "log" not in shared

    @given(params=params_dicts, bad=st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
    def test_BatchFlow_prep_yielding_a_non_dict_is_a_TypeError_naming_the_flow(self, params: Any, bad: Any) -> None:
        """A BatchFlow whose prep yields something other than a param dict is refused, naming it."""

        class Sets(trioflow.BatchFlow):
            def prep(self, shared: Any) -> list[Any]:
                return [params, bad]

        shared: dict[str, Any] = {}
        with pytest.raises(TypeError, match=r"Sets\.prep must yield param dicts") as info:
            trioflow.run(Sets(start=trioflow.Node()), shared)
        assert "raised by param set 1 of Sets" in info.value.__notes__

    async def test_ParallelBatchFlow_prep_yielding_a_non_dict_is_a_TypeError_naming_the_flow(self) -> None:
        """In a ParallelBatchFlow the same TypeError reaches the caller inside the BatchError."""

        class Sets(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[Any]:
                return [{"ok": 1}, "not a dict"]

        with pytest.RaisesGroup(pytest.RaisesExc(TypeError, match=r"Sets\.prep must yield param dicts")):
            await Sets(start=trioflow.Node()).run({})

    @pytest.mark.parametrize("kind", [trioflow.BatchFlow, trioflow.ParallelBatchFlow])
    async def test_BatchFlow_prep_returning_a_non_iterable_is_a_TypeError_naming_the_flow(
        self, kind: type[trioflow.Flow]
    ) -> None:
        """A batch flow's prep that returns a non-iterable is refused before any run, naming the flow."""

        class Grid(kind):  # type: ignore[valid-type,misc]
            def prep(self, shared: Any) -> int:
                return 3

        with pytest.raises(TypeError, match=r"Grid\.prep returned int 3"):
            await Grid(start=Leaf()).run({})

    async def test_BatchFlow_failure_propagates_bare_with_a_note_naming_the_param_set(self) -> None:
        """An error in the sub-flow stops the batch flow; the same exception carries the param-set index."""

        class Boom(trioflow.Node):
            def exec(self, prep_res: Any) -> None:
                if self.params["i"] == 2:
                    raise LookupError("boom")

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared.setdefault("done", []).append(self.params["i"])

        class Runs(trioflow.BatchFlow):
            def prep(self, shared: Any) -> Iterator[dict[str, int]]:
                return ({"i": i} for i in range(5))

        shared: dict[str, Any] = {}
        with pytest.raises(LookupError, match="boom") as info:
            await Runs(start=Boom()).run(shared)
        assert "raised by param set 2 of Runs" in info.value.__notes__
        assert shared["done"] == [0, 1]


class TestAsyncGeneratorPrep:
    """A batch that stops early closes the async generator its prep returned, before it returns."""

    @staticmethod
    def items(log: list[str], n: int) -> AsyncIterator[int]:
        async def gen() -> AsyncIterator[int]:
            try:
                for i in range(n):
                    await trio.lowlevel.checkpoint()
                    yield i
            finally:
                log.append("generator closed")

        return gen()

    async def test_BatchNode_closes_an_async_generator_when_an_item_fails(self) -> None:
        """The generator's finally runs before the error leaves run() (no GC-time ResourceWarning)."""
        log: list[str] = []

        class Failing(trioflow.BatchNode):
            def prep(self, shared: Any) -> AsyncIterator[int]:
                return TestAsyncGeneratorPrep.items(log, 5)

            def exec(self, item: int) -> int:
                if item == 1:
                    raise ValueError(item)
                return item

        with pytest.raises(ValueError):
            await Failing().run({})
        log.append("run returned")
        assert log == ["generator closed", "run returned"]

    async def test_BatchNode_closes_an_async_generator_when_cancelled(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An outside cancel also closes the generator before run() returns."""
        log: list[str] = []

        class Slow(trioflow.BatchNode):
            def prep(self, shared: Any) -> AsyncIterator[int]:
                return TestAsyncGeneratorPrep.items(log, 5)

            async def exec(self, item: int) -> None:
                await trio.sleep(1)

        with trio.move_on_after(1.5):
            await Slow().run({})
        log.append("run returned")
        assert log == ["generator closed", "run returned"]

    async def test_BatchFlow_closes_an_async_generator_when_a_run_fails(self) -> None:
        """A BatchFlow whose sub-flow fails closes the async generator of param sets before it raises."""
        log: list[str] = []

        class Fail(trioflow.Node):
            def exec(self, prep_res: Any) -> None:
                raise KeyError(self.params["i"])

        class Runs(trioflow.BatchFlow):
            async def prep(self, shared: Any) -> AsyncIterator[dict[str, int]]:
                async def sets() -> AsyncIterator[dict[str, int]]:
                    try:
                        for i in range(3):
                            await trio.lowlevel.checkpoint()
                            yield {"i": i}
                    finally:
                        log.append("generator closed")

                return sets()

        with pytest.raises(KeyError):
            await Runs(start=Fail()).run({})
        log.append("run returned")
        assert log == ["generator closed", "run returned"]


class TestPlainExecYields:
    """A batch whose ``exec`` is a plain ``def`` still yields once per item, so it shares the run and
    a cancel from another task stops it (a plain exec cannot be interrupted, but the batch between
    items can)."""

    @pytest.mark.parametrize("kind", ["BatchNode", "ParallelBatchNode"])
    @pytest.mark.parametrize("max_retries", [1, 2])
    async def test_plain_exec_batch_is_cancelled_by_a_sibling(self, kind: str, max_retries: int) -> None:
        """A sibling task that cancels after 10 items gets to run while the batch is going, and the
        batch stops long before its 1,000 items, without calling post."""
        done: list[int] = []
        posted: list[bool] = []

        class Plain(getattr(trioflow, kind)):  # type: ignore[misc]
            def prep(self, shared: Any) -> range:
                return range(1000)

            def exec(self, item: int) -> int:
                done.append(item)
                return item

            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
                posted.append(True)

        options: dict[str, Any] = {"max_retries": max_retries}
        if kind == "ParallelBatchNode":
            options["max_concurrency"] = 4

        async with trio.open_nursery() as nursery:

            async def cancel_after_ten_items() -> None:
                while len(done) < 10:
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()

            nursery.start_soon(Plain(**options).run, {})
            nursery.start_soon(cancel_after_ten_items)

        assert 10 <= len(done) < 100
        assert posted == []
