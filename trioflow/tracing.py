"""A tracer: the timeline of a run, as JSON lines or a Chrome trace for Perfetto.

:class:`Tracer` is an instrument.  Attach it to a run and it records one
:class:`Span` per node run and one per attempt of every batch item::

    tracer = trioflow.Tracer()
    with trioflow.instrumented(tracer):
        await flow.run(shared)
    tracer.write_jsonl("run.jsonl")
    tracer.write_chrome_trace("run.trace.json")  # open in https://ui.perfetto.dev

Times are seconds on Trio's clock (so a ``MockClock`` gives exact, repeatable
traces), relative to the tracer's first event.  In the Chrome trace each
concurrently running task gets a *lane* (a thread row in Perfetto), reused once
free, so a parallel batch with a cap of 8 shows as 8 rows of items under the
row of the node that runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from ._instrument import Instrument

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["Span", "Tracer"]

Outcome = Literal["ok", "retry", "error", "cancelled"]
Kind = Literal["node", "item", "retry"]


@attrs.frozen
class Span:
    """One interval of the timeline.

    Attributes:
        kind: ``"node"`` (a node or flow run, prep to post), ``"item"`` (one
            attempt of one batch item, or one run of a batch flow's sub-flow),
            or ``"retry"`` (an instant: a plain node's ``exec`` failed and will
            be retried; its ``end`` is when the next attempt starts).
        node: the node's class name.
        node_id: tells apart instances (a flow runs a copy of each node per step).
        item: the item index in its batch, or None.
        attempt: the 0-based attempt.
        start: seconds since the tracer's first event.
        end: seconds since the tracer's first event.
        outcome: ``"ok"``, ``"retry"`` (the attempt failed and another
            follows), ``"error"`` or ``"cancelled"``.
        error: ``repr`` of the exception, or None.
        action: the action a node returned (``kind == "node"`` only).
        lane: the row of the Chrome trace this span is drawn on.
    """

    kind: Kind
    node: str
    node_id: int
    item: int | None
    attempt: int
    start: float
    end: float
    outcome: Outcome
    error: str | None = None
    action: str | None = None
    lane: int = 0


def _outcome(error: BaseException | None) -> Outcome:
    if error is None:
        return "ok"
    if isinstance(error, trio.Cancelled):
        return "cancelled"
    return "error"


@attrs.define
class _Open:
    """A span that has started; ``attempt``/``start`` move on at each retry."""

    node: Node
    item: int | None
    start: float
    lane: int
    attempt: int = 0


class Tracer(Instrument):
    """Records the timeline of the runs it is attached to.

    Args:
        clock: the time source; ``trio.current_time`` by default, which makes
            a trace under ``trio.testing.MockClock`` exact.

    Memory grows with the number of spans (one per node run and per item
    attempt): about 200 bytes each, so a million-item batch costs ~200 MB.
    """

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self.clock = clock
        self.spans: list[Span] = []
        self._t0: float | None = None
        self._open: dict[tuple[int, int | None], _Open] = {}
        # lane bookkeeping: which lane each task holds, and how many open spans it has there
        self._task_lane: dict[Any, list[int]] = {}
        self._free_lanes: list[int] = []
        self._lanes = 0

    # -- time and lanes ---------------------------------------------------------

    def _now(self) -> float:
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        return now - self._t0

    def _take_lane(self) -> int:
        task = trio.lowlevel.current_task()
        held = self._task_lane.get(task)
        if held is None:
            if self._free_lanes:
                self._free_lanes.sort()
                lane = self._free_lanes.pop(0)
            else:
                lane = self._lanes
                self._lanes += 1
            held = self._task_lane[task] = [lane, 0]
        held[1] += 1
        return held[0]

    def _give_lane(self) -> None:
        task = trio.lowlevel.current_task()
        held = self._task_lane.get(task)
        if held is None:  # pragma: no cover - a start we did not see
            return
        held[1] -= 1
        if held[1] == 0:
            del self._task_lane[task]
            self._free_lanes.append(held[0])

    def _begin(self, node: Node, item: int | None) -> None:
        self._open[id(node), item] = _Open(node, item, self._now(), self._take_lane())

    def _end(self, kind: Kind, node: Node, item: int | None, error: BaseException | None, **extra: Any) -> None:
        opened = self._open.pop((id(node), item), None)
        if opened is None:  # attached mid-run: we never saw the start
            return
        end = self._now()
        self.spans.append(
            Span(
                kind,
                type(node).__name__,
                id(node),
                item,
                opened.attempt,
                min(opened.start, end),
                end,
                _outcome(error),
                None if error is None else repr(error),
                lane=opened.lane,
                **extra,
            )
        )
        self._give_lane()

    # -- hooks ------------------------------------------------------------------

    def node_started(self, node: Node) -> None:
        self._begin(node, None)

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        self._end("node", node, None, error, action=action)

    def item_started(self, node: Node, index: int) -> None:
        self._begin(node, index)

    def attempt_started(self, node: Node, index: int | None, attempt: int) -> None:
        if index is None:
            return
        opened = self._open.get((id(node), index))
        if opened is not None:  # the attempt starts when admitted, which may be after its backoff
            opened.attempt = attempt
            opened.start = self._now()

    def item_finished(self, node: Node, index: int, error: BaseException | None, value: Any = None) -> None:
        self._end("item", node, index, error)

    def retry_scheduled(self, node: Node, index: int | None, attempt: int, delay: float, error: Exception) -> None:
        now = self._now()
        if index is None:  # a plain node's exec: an instant, inside the node's span
            opened = self._open.get((id(node), None))
            lane = opened.lane if opened is not None else 0
            self.spans.append(
                Span(
                    "retry",
                    type(node).__name__,
                    id(node),
                    None,
                    attempt,
                    now,
                    now + delay,
                    "retry",
                    repr(error),
                    lane=lane,
                )
            )
            return
        opened = self._open.get((id(node), index))
        if opened is None:
            return
        self.spans.append(
            Span(
                "item",
                type(node).__name__,
                id(node),
                index,
                attempt,
                opened.start,
                now,
                "retry",
                repr(error),
                lane=opened.lane,
            )
        )
        opened.attempt = attempt + 1
        opened.start = now + delay

    # -- output -----------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """The spans as dicts, in the order they ended."""
        for span in self.spans:
            yield attrs.asdict(span)

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Write one JSON object per span, one per line."""
        with open(path, "w", encoding="utf-8") as f:
            for record in self.records():
                f.write(json.dumps(record) + "\n")

    def chrome_trace(self) -> dict[str, Any]:
        """The timeline in Chrome's trace-event format (``chrome://tracing``, Perfetto).

        Node runs and item attempts are complete events (``"ph": "X"``) with
        times in microseconds; a plain node's retry is an instant event
        (``"ph": "i"``); each lane is a named thread of process 1.
        """
        events: list[dict[str, Any]] = []
        lanes = sorted({span.lane for span in self.spans})
        events.append({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "trioflow"}})
        for lane in lanes:
            events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": lane, "args": {"name": f"lane {lane}"}})
            events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": lane, "args": {"sort_index": lane}})
        for span in sorted(self.spans, key=lambda s: (s.start, -s.end)):
            args: dict[str, Any] = {"node_id": span.node_id, "attempt": span.attempt, "outcome": span.outcome}
            if span.item is not None:
                args["item"] = span.item
            if span.error is not None:
                args["error"] = span.error
            if span.kind == "node":
                args["action"] = span.action
            ts = round(span.start * 1e6, 3)
            if span.kind == "retry":
                events.append(
                    {
                        "name": f"{span.node} retry",
                        "cat": "retry",
                        "ph": "i",
                        "s": "t",
                        "ts": ts,
                        "pid": 1,
                        "tid": span.lane,
                        "args": args,
                    }
                )
                continue
            name = span.node if span.item is None else f"{span.node} #{span.item}"
            if span.attempt:
                name += f" (attempt {span.attempt + 1})"
            events.append(
                {
                    "name": name,
                    "cat": span.kind,
                    "ph": "X",
                    "ts": ts,
                    "dur": round((span.end - span.start) * 1e6, 3),
                    "pid": 1,
                    "tid": span.lane,
                    "args": args,
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`chrome_trace` as JSON; open the file in https://ui.perfetto.dev."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.chrome_trace(), f)
