"""Instruments: which events a run emits, in which order, and what a faulty instrument does."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given

import trioflow
from tests.fakes import CoolingThrottle, Planned, Throttled
from tests.strategies import caps, item_plans
from trioflow import _instrument
from trioflow._node import Node


class Recorder(trioflow.Instrument):
    """Keeps every event as ``(hook, node, index, detail)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Node, int | None, Any]] = []

    def node_started(self, node: Node) -> None:
        self.events.append(("node_started", node, None, None))

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        self.events.append(("node_finished", node, None, error if error is not None else action))

    def batch_started(self, node: Node, total: int | None) -> None:
        self.events.append(("batch_started", node, None, total))

    def item_started(self, node: Node, index: int) -> None:
        self.events.append(("item_started", node, index, None))

    def attempt_started(self, node: Node, index: int | None, attempt: int) -> None:
        self.events.append(("attempt_started", node, index, attempt))

    def item_finished(self, node: Node, index: int, error: BaseException | None) -> None:
        self.events.append(("item_finished", node, index, error))

    def retry_scheduled(self, node: Node, index: int | None, attempt: int, delay: float, error: Exception) -> None:
        self.events.append(("retry_scheduled", node, index, (attempt, delay)))

    def flow_step(self, flow: Node, node: Node, action: str | None, successor: Node | None) -> None:
        self.events.append(("flow_step", node, None, (type(flow).__name__, action, type(successor).__name__)))

    def hooks(self) -> list[str]:
        return [event[0] for event in self.events]

    def of_item(self, index: int) -> list[tuple[str, Any]]:
        return [(hook, detail) for hook, _, i, detail in self.events if i == index and hook != "node_finished"]


def run_instantly(fn: Any, *args: Any) -> Any:
    """``trio.run`` under an autojumping MockClock, for Hypothesis tests (no fixture per example)."""
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


class TestInstrumented:
    @given(plans=item_plans, cap=caps)
    def test_instrumented_sees_every_item_event_once_in_order(
        self, plans: list[tuple[int, int]], cap: int | None
    ) -> None:
        """Under a parallel batch each item gets started, its retries, finished - once each, in order."""
        recorder = Recorder()
        shared: dict[str, Any] = {"plans": plans}
        attempts = 3

        async def main() -> None:
            with trioflow.instrumented(recorder):
                await Planned(max_concurrency=cap, max_retries=attempts, wait=1, on_error="collect").run(shared)

        run_instantly(main)
        hooks = recorder.hooks()
        assert hooks[:2] == ["node_started", "batch_started"]
        assert recorder.events[1][3] == len(plans)
        assert hooks[-1] == "node_finished"
        assert hooks.count("node_started") == hooks.count("node_finished") == 1
        for index, (_, failures) in enumerate(plans):
            retries = min(failures, attempts - 1)
            events = recorder.of_item(index)
            per_retry = ["attempt_started", "retry_scheduled"] * retries
            assert [hook for hook, _ in events] == ["item_started", *per_retry, "attempt_started", "item_finished"]
            assert [detail[0] for hook, detail in events if hook == "retry_scheduled"] == list(range(retries))
            error = events[-1][1]
            if failures >= attempts:
                assert isinstance(error, ValueError)
                assert isinstance(shared["results"][index], ValueError)
            else:
                assert error is None
                assert shared["results"][index] == index
        # max_concurrency bounds attempts in flight; items in progress (running or waiting to
        # retry) are bounded by max_pending, 4 x the cap by default
        running = peak = 0
        in_progress = peak_in_progress = 0
        for hook in hooks:
            running += {"attempt_started": 1, "retry_scheduled": -1, "item_finished": -1}.get(hook, 0)
            in_progress += {"item_started": 1, "item_finished": -1}.get(hook, 0)
            peak = max(peak, running)
            peak_in_progress = max(peak_in_progress, in_progress)
        assert peak <= (cap or len(plans))
        assert peak_in_progress <= (4 * cap if cap else len(plans))

    async def test_instrumented_items_interleave_across_workers(self, autojump_clock: trio.testing.MockClock) -> None:
        """Instruments follow the run into the worker tasks: three items all start before any finishes."""
        recorder = Recorder()
        with trioflow.instrumented(recorder):
            await Planned(max_concurrency=3).run({"plans": [(1, 0), (1, 0), (1, 0)]})
        item_hooks = [hook for hook in recorder.hooks() if hook.startswith("item")]
        assert item_hooks == ["item_started"] * 3 + ["item_finished"] * 3

    async def test_instrumented_fail_fast_reports_failure_and_cancellations(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With on_error="raise" the failed item finishes with its error, the others with Cancelled."""
        recorder = Recorder()
        with trioflow.instrumented(recorder), pytest.raises(trioflow.BatchError):
            await Planned(max_concurrency=3).run({"plans": [(5, 0), (1, 1), (5, 0), (5, 0)]})
        finished = {index: detail for hook, _, index, detail in recorder.events if hook == "item_finished"}
        assert isinstance(finished.pop(1), ValueError)
        assert set(finished) == {0, 2}
        assert all(isinstance(error, trio.Cancelled) for error in finished.values())
        assert recorder.hooks()[-1] == "node_finished"
        assert isinstance(recorder.events[-1][3], trioflow.BatchError)

    async def test_instrumented_batch_started_total_is_None_for_a_generator(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A lazy input has no length: batch_started gets None; a list gets its len."""

        class Lazy(trioflow.BatchNode):
            def prep(self, shared: Any) -> Any:
                return (i for i in range(3))

        recorder = Recorder()
        with trioflow.instrumented(recorder):
            await Lazy().run({})
            await Planned().run({"plans": [(0, 0)] * 4})
        totals = [detail for hook, _, _, detail in recorder.events if hook == "batch_started"]
        assert totals == [None, 4]

    async def test_instrumented_Node_retry_has_no_index_and_grows_by_backoff(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A plain node's retries are reported with index None and the wait*backoff**attempt delay."""

        class Flaky(trioflow.Node):
            def exec(self, prep_res: Any) -> str:
                if self.cur_retry < 2:
                    raise KeyError("again")
                return "ok"

        recorder = Recorder()
        with trioflow.instrumented(recorder):
            await Flaky(max_retries=3, wait=1.0, backoff=3.0).run({})
        retries = [(index, detail) for hook, _, index, detail in recorder.events if hook == "retry_scheduled"]
        assert retries == [(None, (0, 1.0)), (None, (1, 3.0))]

    async def test_instrumented_Flow_steps_and_nested_nodes_in_order(self) -> None:
        """A flow reports each step after that node finished, with the action and the successor."""

        class A(trioflow.Node):
            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> str:
                return "go"

        class B(trioflow.Node):
            pass

        a = A()
        a - "go" >> B()
        recorder = Recorder()
        with trioflow.instrumented(recorder):
            await trioflow.Flow(start=a).run({})
        assert [(hook, type(node).__name__) for hook, node, _, _ in recorder.events] == [
            ("node_started", "Flow"),
            ("node_started", "A"),
            ("node_finished", "A"),
            ("flow_step", "A"),
            ("node_started", "B"),
            ("node_finished", "B"),
            ("flow_step", "B"),
            ("node_finished", "Flow"),
        ]
        steps = [detail for hook, _, _, detail in recorder.events if hook == "flow_step"]
        assert steps == [("Flow", "go", "B"), ("Flow", None, "NoneType")]

    async def test_instrumented_ParallelBatchFlow_reports_each_param_set_as_an_item(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A batch flow's param sets are its items: batch_started with the count, item events per set."""

        class Sleep(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                await trio.sleep(self.params["s"])

        class Runs(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[dict[str, int]]:
                return [{"s": 3}, {"s": 1}, {"s": 2}]

        recorder = Recorder()
        with trioflow.instrumented(recorder):
            await Runs(start=Sleep()).run({})
        runs = [(hook, i) for hook, node, i, _ in recorder.events if isinstance(node, Runs) and hook != "node_finished"]
        assert runs[:2] == [("node_started", None), ("batch_started", None)]
        assert sorted(runs[2:5]) == [("item_started", 0), ("item_started", 1), ("item_started", 2)]
        assert runs[5:] == [("item_finished", 1), ("item_finished", 2), ("item_finished", 0)]
        assert [hook for hook, node, _, _ in recorder.events if isinstance(node, Sleep)].count("node_started") == 3

    def test_instrumented_of_nothing_keeps_the_fast_path(self) -> None:
        """instrumented() with no instrument attaches nothing: emit sites see None."""
        with trioflow.instrumented():
            assert _instrument.current() is None

    def test_instrumented_blocks_nest_and_unwind(self) -> None:
        """An inner block adds to the outer one's instruments; leaving it restores the outer set."""
        outer, inner = Recorder(), Recorder()
        with trioflow.instrumented(outer):
            with trioflow.instrumented(inner):
                attached = _instrument.current()
                assert attached is not None and attached.instruments == [outer, inner]
            attached = _instrument.current()
            assert attached is not None and attached.instruments == [outer]
        assert _instrument.current() is None


class Faulty(trioflow.Instrument):
    """Raises in ``item_started`` from its ``fail_at``-th call on."""

    def __init__(self, fail_at: int) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def item_started(self, node: Node, index: int) -> None:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("bug in my instrument")


class TestFaultyInstrument:
    async def test_faulty_instrument_is_detached_with_a_warning_and_the_run_goes_on(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A hook that raises warns once, is never called again, and neither the run nor other instruments suffer."""
        faulty, healthy = Faulty(fail_at=3), Recorder()
        shared: dict[str, Any] = {"plans": [(1, 0)] * 10}
        with pytest.warns(trioflow.InstrumentWarning, match="bug in my instrument") as warned:
            with trioflow.instrumented(faulty, healthy):
                action = await Planned(max_concurrency=4).run(shared)
        assert len(warned) == 1
        assert faulty.calls == 3
        assert action == "done" and shared["results"] == list(range(10))
        assert healthy.hooks().count("item_started") == healthy.hooks().count("item_finished") == 10

    async def test_faulty_instrument_is_detached_from_the_outer_block_too(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Detaching in an inner block also detaches the instrument from the block around it."""
        faulty = Faulty(fail_at=1)
        with trioflow.instrumented(faulty):
            with pytest.warns(trioflow.InstrumentWarning), trioflow.instrumented(Recorder()):
                await Planned().run({"plans": [(0, 0)]})
            await Planned().run({"plans": [(0, 0)]})
            attached = _instrument.current()
            assert attached is not None and attached.instruments == []
        assert faulty.calls == 1

    async def test_BaseException_from_a_hook_is_not_swallowed(self) -> None:
        """A hook raising a BaseException (say KeyboardInterrupt) stops the run like any BaseException."""

        class Stop(BaseException):
            pass

        class Interrupting(trioflow.Instrument):
            def node_started(self, node: Node) -> None:
                raise Stop

        with trioflow.instrumented(Interrupting()), pytest.raises(Stop):
            await trioflow.Node().run({})

    async def test_instrument_needs_only_the_hooks_it_uses(self) -> None:
        """Any object works as an instrument: missing hooks are skipped."""

        class OnlyStarts:
            def __init__(self) -> None:
                self.started: list[str] = []

            def node_started(self, node: Node) -> None:
                self.started.append(type(node).__name__)

        only = OnlyStarts()
        with trioflow.instrumented(only):
            await trioflow.Flow(start=trioflow.Node()).run({})
        assert only.started == ["Flow", "Node"]


class TestAttaching:
    async def test_instrumented_nested_blocks_attach_an_instrument_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The same instrument given to two nested blocks (and twice to one) sees each event once."""
        recorder, other = Recorder(), Recorder()
        with trioflow.instrumented(recorder), trioflow.instrumented(other, recorder, recorder):
            attached = _instrument.current()
            await Planned(max_concurrency=3).run({"plans": [(1, 0)] * 3})
        for seen in (recorder, other):
            assert seen.hooks().count("item_finished") == 3
            assert seen.hooks().count("node_started") == 1
        assert attached is not None and attached.instruments == [recorder, other]

    def test_instrumented_refuses_an_async_hook(self) -> None:
        """An ``async def`` hook would never be awaited: attaching it is a TypeError naming the class and hook."""

        class Slow(trioflow.Instrument):
            async def item_finished(self, node: Node, index: int, error: BaseException | None) -> None:  # type: ignore[override]
                pass

        with pytest.raises(TypeError, match=r"instrument Slow\.item_finished is async def") as raised:
            with trioflow.instrumented(Recorder(), Slow()):
                pass  # pragma: no cover - never reached
        assert "plain def" in str(raised.value)
        assert _instrument.current() is None  # nothing was attached

    async def test_instrumented_item_finished_carries_the_value_or_takes_three_arguments(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """item_finished gets the item's value (None for a failure); a three-argument hook is still called."""

        class Values:
            def __init__(self) -> None:
                self.seen: dict[int, tuple[Any, Any]] = {}

            def item_finished(self, node: Node, index: int, error: BaseException | None, value: Any) -> None:
                self.seen[index] = (type(error).__name__ if error is not None else None, value)

        class Old:
            def __init__(self) -> None:
                self.seen: list[int] = []

            def item_finished(self, node: Node, index: int, error: BaseException | None) -> None:
                self.seen.append(index)

        values, old = Values(), Old()
        with trioflow.instrumented(values, old):
            await Planned(on_error="collect").run({"plans": [(1, 0), (1, 1), (2, 0)]})
        assert values.seen == {0: (None, 0), 1: ("ValueError", None), 2: (None, 2)}
        assert sorted(old.seen) == [0, 1, 2]


class Events(trioflow.Instrument):
    """Keeps ``(hook, args)`` for the hooks that Recorder does not have."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def node_started(self, node: Node) -> None:
        self.events.append(("node_started", (type(node).__name__, _instrument.current_place())))

    def batch_started(self, node: Node, total: int | None) -> None:
        self.events.append(("batch_started", (type(node).__name__, total)))

    def item_started(self, node: Node, index: int) -> None:
        self.events.append(("item_started", (type(node).__name__, index)))

    def attempt_started(self, node: Node, index: int | None, attempt: int) -> None:
        self.events.append(("attempt_started", (index, attempt, trio.current_time())))

    def item_finished(self, node: Node, index: int, error: BaseException | None, value: Any = None) -> None:
        self.events.append(("item_finished", (type(node).__name__, index, value)))

    def throttled(self, node: Node, index: int | None, delay: float, error: Exception) -> None:
        self.events.append(("throttled", (index, delay, type(error).__name__, trio.current_time())))

    def rate_changed(self, throttle: Any, rate: float) -> None:
        self.events.append(("rate_changed", (type(throttle).__name__, rate)))

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        self.events.append(("node_finished", (type(node).__name__,)))

    def of(self, hook: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.events if name == hook]


class TestNewHooks:
    async def test_instrumented_throttled_and_rate_changed_with_attempt_started_after_the_cool_down(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A throttled attempt: throttled(delay), rate_changed, then the same attempt 0 admitted after the cool-down."""
        events = Events()
        with trioflow.instrumented(events):
            await Throttled(max_concurrency=2, throttle=CoolingThrottle(cool_down=2, rate=40)).run(
                {"plans": [(1, 1), (3, 0)]}
            )
        assert events.of("throttled") == [(0, 2, "Busy", 1.0)]
        assert events.of("rate_changed") == [("CoolingThrottle", 20.0)]
        assert sorted(events.of("attempt_started")) == [(0, 0, 0.0), (0, 0, 3.0), (1, 0, 0.0)]

    async def test_current_place_names_the_step_and_the_batch_flow_run(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """While an instrument is attached, current_place() is the flow, the graph ids and the batch-flow run."""

        class Blur(trioflow.Node):
            pass

        class Grid(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[dict[str, int]]:
                return [{"i": 0}, {"i": 1}]

        class Pipeline(trioflow.Flow):
            pass

        first = Blur()
        first >> Grid(start=Blur())
        events = Events()
        with trioflow.instrumented(events):
            await Pipeline(start=first).run({})
        assert sorted(events.of("node_started")) == [
            ("Blur", ("Pipeline", "Blur_1")),
            ("Blur", ("Pipeline", "Grid_1", "[0]", "Blur_1")),
            ("Blur", ("Pipeline", "Grid_1", "[1]", "Blur_1")),
            ("Grid", ("Pipeline", "Grid_1")),
            ("Pipeline", ()),
        ]
        assert _instrument.current_place() == ()

    async def test_parallel_map_and_as_completed_emit_node_batch_and_item_events_under_their_name(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """parallel_map(name=...) and as_completed(name=...) report a node of that class name, its batch, its items."""

        async def double(x: int) -> int:
            await trio.sleep(x)
            return 2 * x

        events = Events()
        with trioflow.instrumented(events):
            await trioflow.parallel_map(double, [2, 1], name="pages")
            async with trioflow.as_completed(double, iter([1]), name="stream") as results:
                async for _ in results:
                    pass
        assert [(hook, args[0]) for hook, args in events.events if hook != "attempt_started"] == [
            ("node_started", "pages"),
            ("batch_started", "pages"),
            ("item_started", "pages"),
            ("item_started", "pages"),
            ("item_finished", "pages"),
            ("item_finished", "pages"),
            ("node_finished", "pages"),
            ("node_started", "stream"),
            ("batch_started", "stream"),
            ("item_started", "stream"),
            ("item_finished", "stream"),
            ("node_finished", "stream"),
        ]
        assert events.of("batch_started") == [("pages", 2), ("stream", None)]
        assert events.of("item_finished") == [("pages", 1, 2), ("pages", 0, 4), ("stream", 0, 2)]
