"""Tracer: the timeline of a run, and its JSON-lines and Chrome trace-event outputs."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import given

import trioflow
from tests.fakes import Planned
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
        """The Chrome file is JSON whose complete events are the node runs and item attempts, in microseconds."""
        tracer = trioflow.Tracer()
        await traced_flow(tracer)
        path = tmp_path / "run.trace.json"
        tracer.write_chrome_trace(path)
        trace = json.loads(path.read_text())
        events = trace["traceEvents"]
        complete = sorted((e["name"], e["ts"], e["dur"]) for e in events if e["ph"] == "X")
        assert complete == [
            ("Flaky", 0.0, 2_500_000.0),
            ("Flow", 0.0, 5_500_000.0),
            ("Planned", 2_500_000.0, 3_000_000.0),
            ("Planned #0", 2_500_000.0, 2_000_000.0),
            ("Planned #1", 2_500_000.0, 1_000_000.0),
            ("Planned #1 (attempt 2)", 4_500_000.0, 1_000_000.0),
            ("Planned #2", 3_500_000.0, 1_000_000.0),  # in the place item 1 gave back while waiting
        ]
        instants = [(e["name"], e["ts"], e["args"]["error"]) for e in events if e["ph"] == "i"]
        assert instants == [("Flaky retry", 1_000_000.0, "KeyError('first')")]
        retried = next(e for e in events if e["name"] == "Planned #1")
        assert retried["args"] == {
            "node_id": retried["args"]["node_id"],
            "attempt": 0,
            "outcome": "retry",
            "item": 1,
            "error": "ValueError(1)",
        }
        assert nested_properly(events)
        lanes = {e["tid"] for e in events if e["ph"] == "X"}
        # the flow's task, and a worker per item in progress: item 1 waits to retry in its own
        # worker while item 2 runs in the place it gave back
        assert len(lanes) == 4
        names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
        assert names == {lane: f"lane {lane}" for lane in lanes}

    async def test_Tracer_write_jsonl_has_one_record_per_span(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """Each line is a JSON record with node, item, start, end, attempt and outcome."""
        tracer = trioflow.Tracer()
        await traced_flow(tracer)
        path = tmp_path / "run.jsonl"
        tracer.write_jsonl(path)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == len(tracer.spans) == 8
        item_rows = sorted(
            (r["item"], r["attempt"], r["start"], r["end"], r["outcome"]) for r in records if r["kind"] == "item"
        )
        assert item_rows == [
            (0, 0, 2.5, 4.5, "ok"),
            (1, 0, 2.5, 3.5, "retry"),
            (1, 1, 4.5, 5.5, "ok"),
            (2, 0, 3.5, 4.5, "ok"),  # item 1's backoff gives its place to item 2
        ]
        flow = next(r for r in records if r["node"] == "Flow")
        assert (flow["kind"], flow["start"], flow["end"], flow["outcome"], flow["action"]) == (
            "node",
            0.0,
            5.5,
            "ok",
            "done",  # the flow's action is its last node's, Planned.post's "done"
        )

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

    @given(plans=item_plans, cap=caps)
    def test_Tracer_timeline_matches_the_plan(self, plans: list[tuple[int, int]], cap: int | None) -> None:
        """Each item has one span per attempt, each as long as its exec, a wait apart; lanes nest; the cap holds."""
        tracer = trioflow.Tracer()
        attempts = 3

        async def main() -> None:
            with trioflow.instrumented(tracer):
                await Planned(max_concurrency=cap, max_retries=attempts, wait=1, on_error="collect").run(
                    {"plans": plans}
                )

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        items = sorted((s for s in tracer.spans if s.kind == "item"), key=lambda s: (s.item or 0, s.attempt))
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
