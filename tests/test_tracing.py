"""Tracer: the timeline of a run, and its JSON-lines and Chrome trace-event outputs."""

from __future__ import annotations

import gc
import itertools
import json
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import given

import trioflow
from tests.fakes import CoolingThrottle, Planned, Throttled
from tests.strategies import caps, item_plans


class Flaky(trioflow.Node):
    """Takes 1 s and fails its first attempt."""

    async def exec(self, prep_res: Any) -> str:
        await trio.sleep(1)
        if self.cur_retry == 0:
            raise KeyError("first")
        return "ok"


def nested_properly(events: list[dict[str, Any]]) -> bool:
    """On one Chrome thread, two complete events either nest or do not overlap."""
    by_lane: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for event in events:
        if event["ph"] == "X":
            by_lane[event["tid"]].append((event["ts"], event["ts"] + event["dur"]))
    for spans in by_lane.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for start, end in spans:
            while stack and stack[-1] <= start:
                stack.pop()
            if stack and end > stack[-1]:
                return False
            stack.append(end)
    return True


async def traced_flow(tracer: trioflow.Tracer) -> None:
    flaky = Flaky(max_retries=2, wait=0.5)
    flaky >> Planned(max_concurrency=2, max_retries=2, wait=1)
    with trioflow.instrumented(tracer):
        await trioflow.Flow(start=flaky).run({"plans": [(2, 0), (1, 1), (1, 0)]})


class TestTracer:
    async def test_Tracer_write_chrome_trace_parses_with_the_expected_events(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """The Chrome file is JSON: node runs, item attempts and backoff waits as complete events, in microseconds."""
        tracer = trioflow.Tracer()
        await traced_flow(tracer)
        path = tmp_path / "run.trace.json"
        tracer.write_chrome_trace(path)
        trace = json.loads(path.read_text())
        events = trace["traceEvents"]
        complete = sorted((e["name"], e["cat"], e["ts"], e["dur"]) for e in events if e["ph"] == "X")
        assert complete == [
            ("Flaky_1", "node", 0.0, 2_500_000.0),
            ("Flaky_1 backoff", "backoff", 1_000_000.0, 500_000.0),  # wait=0.5 before its attempt 1
            ("Flow", "node", 0.0, 5_500_000.0),
            ("Planned_1", "node", 2_500_000.0, 3_000_000.0),
            ("Planned_1[0]", "item", 2_500_000.0, 2_000_000.0),
            ("Planned_1[1]", "item", 2_500_000.0, 1_000_000.0),
            ("Planned_1[1] attempt 1", "item", 4_500_000.0, 1_000_000.0),
            ("Planned_1[1] backoff", "backoff", 3_500_000.0, 1_000_000.0),
            ("Planned_1[2]", "item", 3_500_000.0, 1_000_000.0),  # in the place item 1 gave back while waiting
        ]
        instants = [(e["name"], e["ts"], e["args"]["error"]) for e in events if e["ph"] == "i"]
        assert instants == [("Flaky_1 retry", 1_000_000.0, "KeyError('first')")]
        retried = next(e for e in events if e["name"] == "Planned_1[1]")
        assert retried["args"] == {
            "node": "Planned",
            "place": "Flow/Planned_1",
            "attempt": 0,
            "outcome": "retry",
            "item": 1,
            "error": "ValueError(1)",
        }
        backoff = next(e for e in events if e["name"] == "Planned_1[1] backoff")
        assert (backoff["args"]["attempt"], backoff["args"]["delay"], backoff["args"]["outcome"]) == (0, 1, "ok")
        assert nested_properly(events)
        lanes = {e["tid"] for e in events if e["ph"] == "X"}
        # the flow's task, and a worker per item in progress: item 1 waits to retry in its own
        # worker while item 2 runs in the place it gave back
        assert len(lanes) == 4
        assert backoff["tid"] == retried["tid"]  # the wait is drawn on the waiting item's row
        names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
        assert names == {lane: f"lane {lane}" for lane in lanes}

    async def test_Tracer_write_jsonl_has_one_record_per_span(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """Each line is a JSON record with node, place, item, start, end, attempt and outcome."""
        tracer = trioflow.Tracer()
        await traced_flow(tracer)
        path = tmp_path / "run.jsonl"
        tracer.write_jsonl(path)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == len(tracer.spans) == 10
        item_rows = sorted(
            (r["item"], r["attempt"], r["start"], r["end"], r["outcome"]) for r in records if r["kind"] == "item"
        )
        assert item_rows == [
            (0, 0, 2.5, 4.5, "ok"),
            (1, 0, 2.5, 3.5, "retry"),
            (1, 1, 4.5, 5.5, "ok"),
            (2, 0, 3.5, 4.5, "ok"),  # item 1's backoff gives its place to item 2
        ]
        waits = sorted(
            (r["place"], r["item"], r["attempt"], r["start"], r["end"], r["delay"])
            for r in records
            if r["kind"] == "backoff"
        )
        assert waits == [(["Flow", "Flaky_1"], None, 0, 1.0, 1.5, 0.5), (["Flow", "Planned_1"], 1, 0, 3.5, 4.5, 1)]
        flow = next(r for r in records if r["node"] == "Flow")
        assert (flow["kind"], flow["place"], flow["start"], flow["end"], flow["outcome"], flow["action"]) == (
            "node",
            ["Flow"],
            0.0,
            5.5,
            "ok",
            "done",  # the flow's action is its last node's, Planned.post's "done"
        )
        flaky = next(r for r in records if r["node"] == "Flaky" and r["kind"] == "node")
        assert flaky["attempt"] == 1  # a node run's attempt is its exec's last

    async def test_Tracer_records_errors_and_cancellations(self, autojump_clock: trio.testing.MockClock) -> None:
        """A fail-fast batch leaves an error span for the failed item and cancelled spans for the others."""
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            try:
                await Planned(max_concurrency=2).run({"plans": [(1, 1), (5, 0)]})
            except trioflow.BatchError:
                pass
        outcomes = {(s.kind, s.item): (s.outcome, s.end) for s in tracer.spans}
        assert outcomes == {
            ("item", 0): ("error", 1.0),
            ("item", 1): ("cancelled", 1.0),
            ("node", None): ("error", 1.0),
        }

    async def test_Tracer_a_cancel_during_a_backoff_ends_the_wait_as_cancelled(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An item cancelled while it waits to retry: its last slice is the backoff, cut short, cancelled."""
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer), trio.move_on_after(2):
            await Planned(max_concurrency=1, max_retries=2, wait=10).run({"plans": [(1, 1)]})
        rows = sorted((s.kind, s.start, s.end, s.outcome, s.delay) for s in tracer.spans if s.item == 0)
        assert rows == [("backoff", 1.0, 2.0, "cancelled", 10), ("item", 0.0, 1.0, "retry", None)]

    @given(plans=item_plans, cap=caps)
    def test_Tracer_timeline_matches_the_plan(self, plans: list[tuple[int, int]], cap: int | None) -> None:
        """An item has a span per attempt, as long as its exec, a backoff between; lanes nest; the cap holds."""
        tracer = trioflow.Tracer()
        attempts = 3

        async def main() -> None:
            with trioflow.instrumented(tracer):
                await Planned(max_concurrency=cap, max_retries=attempts, wait=1, on_error="collect").run(
                    {"plans": plans}
                )

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        items = sorted((s for s in tracer.spans if s.kind == "item"), key=lambda s: (s.item or 0, s.attempt))
        waits = sorted((s for s in tracer.spans if s.kind == "backoff"), key=lambda s: (s.item or 0, s.attempt))
        for index, (duration, failures) in enumerate(plans):
            spans = [s for s in items if s.item == index]
            runs = min(failures, attempts - 1) + 1
            assert [s.attempt for s in spans] == list(range(runs))
            assert all(s.end - s.start == duration for s in spans)
            # the retry waits its 1 s, then for a place (others' attempts may hold them all)
            gaps = [b.start - a.end for a, b in itertools.pairwise(spans)]
            assert all(gap >= 1 for gap in gaps)
            if cap is None or cap >= len(plans):
                assert all(gap == 1 for gap in gaps)
            # each gap is drawn as a backoff slice, from the failure to the next attempt's start
            backoffs = [(w.attempt, w.start, w.end, w.delay, w.outcome) for w in waits if w.item == index]
            assert backoffs == [(a.attempt, a.end, b.start, 1, "ok") for a, b in itertools.pairwise(spans)]
            assert [s.outcome for s in spans[:-1]] == ["retry"] * (runs - 1)
            assert spans[-1].outcome == ("error" if failures >= attempts else "ok")
        assert nested_properly(tracer.chrome_trace()["traceEvents"])
        edges = sorted(
            [(s.start, 1) for s in items if s.end > s.start] + [(s.end, -1) for s in items if s.end > s.start]
        )
        running = peak = 0
        for _, step in edges:
            running += step
            peak = max(peak, running)
        assert peak <= (cap or len(plans))


class TestTracerRuns:
    async def test_Tracer_concurrent_runs_of_one_Flow_each_get_their_spans(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Five runs of one Flow object at once give five flow spans and five step spans, and keep no task alive."""
        tasks: list[weakref.ref[trio.lowlevel.Task]] = []

        class Step(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                tasks.append(weakref.ref(trio.lowlevel.current_task()))
                await trio.sleep(1 + len(tasks))

        flow = trioflow.Flow(start=Step())
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(flow.run, {})
        rows = sorted((s.node, s.end, s.outcome) for s in tracer.spans)
        ends = [2.0, 3.0, 4.0, 5.0, 6.0]
        assert rows == [("Flow", end, "ok") for end in ends] + [("Step", end, "ok") for end in ends]
        assert len({s.lane for s in tracer.spans if s.node == "Flow"}) == 5
        gc.collect()
        assert [ref() for ref in tasks] == [None] * 5

    async def test_Tracer_one_ParallelBatchNode_object_run_twice_at_once_gives_every_item_span(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Two concurrent runs of one node object: 2 node spans and 6 item spans, each with its own timing."""
        node = Planned(max_concurrency=3)
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.run, {"plans": [(1, 0)] * 3})
                nursery.start_soon(node.run, {"plans": [(2, 0)] * 3})
        assert sorted(s.end for s in tracer.spans if s.kind == "node") == [1.0, 2.0]
        items = sorted((s.item, s.start, s.end, s.outcome) for s in tracer.spans if s.kind == "item")
        assert items == [(i, 0.0, end, "ok") for i in range(3) for end in (1.0, 2.0)]

    async def test_Tracer_one_plain_Node_object_retrying_in_two_runs_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A plain node's retries and backoffs land in the run they belong to, not the other one's."""
        flaky = Flaky(max_retries=2, wait=3)
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flaky.run, {})
                await trio.sleep(0.5)
                nursery.start_soon(flaky.run, {})
        by_lane: dict[int, list[tuple[str, float, float]]] = defaultdict(list)
        for span in tracer.spans:
            by_lane[span.lane].append((span.kind, span.start, span.end))
        assert sorted(sorted(rows) for rows in by_lane.values()) == [
            [("backoff", 1.0, 4.0), ("node", 0.0, 5.0), ("retry", 1.0, 1.0)],
            [("backoff", 1.5, 4.5), ("node", 0.5, 5.5), ("retry", 1.5, 1.5)],
        ]


class Blur(trioflow.Node):
    async def exec(self, prep_res: Any) -> None:
        await trio.sleep(1)


class Load(trioflow.Node):
    async def exec(self, prep_res: Any) -> list[int]:
        async def fetch(page: int) -> int:
            await trio.sleep(1)
            return page

        return await trioflow.parallel_map(fetch, [1, 2], name="fetch")


class Grid(trioflow.ParallelBatchFlow):
    def prep(self, shared: Any) -> list[dict[str, int]]:
        return [{"image": 0}, {"image": 1}]


class Pipeline(trioflow.Flow):
    pass


class TestTracerNames:
    async def test_Tracer_names_nodes_by_their_place_in_the_graph(self, autojump_clock: trio.testing.MockClock) -> None:
        """Spans carry the place (flow, graph id, batch-flow run); Chrome names are graph ids, never id()."""
        load, blur = Load(), Blur()
        blur >> Blur()
        load >> Grid(start=blur)
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            await Pipeline(start=load).run({})
        places = sorted((s.kind, s.place, s.item) for s in tracer.spans)
        assert places == [
            ("item", ("Pipeline", "Grid_1"), 0),
            ("item", ("Pipeline", "Grid_1"), 1),
            ("item", ("Pipeline", "Load_1", "fetch"), 0),
            ("item", ("Pipeline", "Load_1", "fetch"), 1),
            ("node", ("Pipeline",), None),
            ("node", ("Pipeline", "Grid_1"), None),
            ("node", ("Pipeline", "Grid_1", "[0]", "Blur_1"), None),
            ("node", ("Pipeline", "Grid_1", "[0]", "Blur_2"), None),
            ("node", ("Pipeline", "Grid_1", "[1]", "Blur_1"), None),
            ("node", ("Pipeline", "Grid_1", "[1]", "Blur_2"), None),
            ("node", ("Pipeline", "Load_1"), None),
            ("node", ("Pipeline", "Load_1", "fetch"), None),  # a parallel_map run inside Load's exec
        ]
        events = [e for e in tracer.chrome_trace()["traceEvents"] if e["ph"] == "X"]
        names = sorted(e["name"] for e in events)
        assert names == sorted(
            ["Pipeline", "Load_1", "fetch", "fetch[0]", "fetch[1]", "Grid_1", "Grid_1[0]", "Grid_1[1]"]
            + ["Blur_1", "Blur_2"] * 2
        )
        blur = next(e for e in events if e["name"] == "Blur_2" and e["args"]["place"].endswith("[1]/Blur_2"))
        assert blur["args"] == {
            "node": "Blur",
            "place": "Pipeline/Grid_1/[1]/Blur_2",
            "attempt": 0,
            "outcome": "ok",
            "action": None,
        }
        assert nested_properly(events)

    async def test_Tracer_attempts_are_numbered_from_0_in_names_and_args(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The span named "attempt 2" is the one whose args.attempt is 2 (the second retry), as cur_retry says."""
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            await Planned(max_retries=3).run({"plans": [(1, 2)]})
        items = [e for e in tracer.chrome_trace()["traceEvents"] if e.get("cat") == "item"]
        assert sorted((e["name"], e["args"]["attempt"]) for e in items) == [
            ("Planned[0]", 0),
            ("Planned[0] attempt 1", 1),
            ("Planned[0] attempt 2", 2),
        ]

    async def test_Tracer_sees_parallel_map_and_as_completed_by_name(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """parallel_map(name=...) and as_completed(name=...) give a node span and item spans under that name."""

        async def double(x: int) -> int:
            await trio.sleep(x)
            return 2 * x

        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            assert await trioflow.parallel_map(double, [1, 2], max_concurrency=2, name="pages") == [2, 4]
            async with trioflow.as_completed(double, [2, 1], name="stream") as results:
                assert [index async for index, _ in results] == [1, 0]
        rows = sorted((s.kind, s.node, s.item, s.start, s.end) for s in tracer.spans)
        assert rows == [
            ("item", "pages", 0, 0.0, 1.0),
            ("item", "pages", 1, 0.0, 2.0),
            ("item", "stream", 0, 2.0, 4.0),
            ("item", "stream", 1, 2.0, 3.0),
            ("node", "pages", None, 0.0, 2.0),
            ("node", "stream", None, 2.0, 4.0),
        ]


class TestTracerThrottle:
    async def test_Tracer_draws_a_throttled_attempt_and_its_cool_down(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A throttled attempt ends "throttled", the cool-down is a slice until the attempt is made again,
        which keeps its number; the rate the Throttle moved to is a counter track."""
        throttle = CoolingThrottle(cool_down=2, rate=40)
        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            await Throttled(max_concurrency=2, throttle=throttle).run({"plans": [(1, 1), (3, 0)]})
        rows = sorted((s.kind, s.item, s.attempt, s.start, s.end, s.outcome, s.delay) for s in tracer.spans)
        assert rows == [
            ("cooldown", 0, 0, 1.0, 3.0, "ok", 2),
            ("item", 0, 0, 0.0, 1.0, "throttled", None),
            ("item", 0, 0, 3.0, 4.0, "ok", None),  # the same attempt 0: a throttle is not a retry
            ("item", 1, 0, 0.0, 3.0, "ok", None),
            ("node", None, 0, 0.0, 4.0, "ok", None),
        ]
        events = tracer.chrome_trace()["traceEvents"]
        assert sorted(e["name"] for e in events if e["ph"] == "X" and e["cat"] != "node") == [
            "Throttled[0]",
            "Throttled[0]",
            "Throttled[0] cool-down",
            "Throttled[1]",
        ]
        counters = [(e["name"], e["ts"], e["args"]) for e in events if e["ph"] == "C"]
        assert counters == [("CoolingThrottle 1 rate", 1_000_000.0, {"per second": 20.0})]
        assert nested_properly(events)
