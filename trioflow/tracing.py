"""A tracer: the timeline of a run, as JSON lines or a Chrome trace for Perfetto.

:class:`Tracer` is an instrument.  Attach it to a run and it records one
:class:`Span` per node run, one per attempt of every batch item, and one per
wait between two attempts (a retry's backoff, a Throttle's cool-down)::

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

Nodes are named by their place in the graph (see
``trioflow._instrument.current_place``): a step of a flow by its graph id, as
:meth:`Flow.to_mermaid` numbers its boxes (``"Blur_1"``), anything else by its
class name; ``Span.place`` holds the whole path, for example
``("Pipeline", "Grid_1", "[3]", "Blur_1")``.  Attempts are numbered from 0,
as ``Node.cur_retry`` and the instrument hooks number them: attempt 1 is the
first retry.

A run is told apart from another by the task that runs it, not by the node
object, so one graph (or one node object) run many times at once gives one
span per run.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from ._instrument import Instrument, place_of

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["Span", "Tracer"]

Outcome = Literal["ok", "retry", "throttled", "error", "cancelled"]
Kind = Literal["node", "item", "retry", "backoff", "cooldown"]


@attrs.frozen
class Span:
    """One interval of the timeline.

    Attributes:
        kind: ``"node"`` (a node or flow run, prep to post); ``"item"`` (one
            attempt of one batch item, from its admission to its end, or one
            run of a batch flow's sub-flow); ``"backoff"`` (an item or a plain
            node waiting to retry: from the failure to the next attempt's
            admission, so it includes any wait for a free place after the
            policy's delay); ``"cooldown"`` (the same after a throttled
            attempt: the Throttle's shared cool-down, then admission); or
            ``"retry"`` (an instant, ``start == end``: a plain node's ``exec``
            failed and will be tried again; the error is on it).
        node: the node's class name.
        place: where in the graph the node ran, outermost first; its last
            segment names the node (its graph id in a flow, else its class name).
        item: the item index in its batch, or None.
        attempt: the attempt, numbered from 0 (attempt 1 is the first retry);
            for a node run, the last attempt of its ``exec``.  A wait has the
            number of the attempt that failed before it.  A throttled attempt
            does not count, so the attempt after a cool-down has the same number.
        start: seconds since the tracer's first event.
        end: seconds since the tracer's first event.
        outcome: ``"ok"``; ``"retry"`` (the attempt failed and another
            follows); ``"throttled"`` (the provider throttled it; it is made
            again after a cool-down); ``"error"``; ``"cancelled"``.  A wait is
            ``"ok"`` when the next attempt started.
        error: ``repr`` of the exception, or None.
        action: the action a node returned (``kind == "node"`` only).
        delay: for a wait, the seconds asked for (the retry policy's delay, the
            Throttle's cool-down); the span may be longer, while a place frees up.
        lane: the row of the Chrome trace this span is drawn on.
    """

    kind: Kind
    node: str
    place: tuple[str, ...]
    item: int | None
    attempt: int
    start: float
    end: float
    outcome: Outcome
    error: str | None = None
    action: str | None = None
    delay: float | None = None
    lane: int = 0

    @property
    def label(self) -> str:
        """A short name: the node's (its place's last segment), with ``[item]`` for an item."""
        name = self.place[-1] if self.place else self.node
        return name if self.item is None else f"{name}[{self.item}]"


def _outcome(error: BaseException | None) -> Outcome:
    if error is None:
        return "ok"
    if isinstance(error, trio.Cancelled):
        return "cancelled"
    return "error"


@attrs.define
class _Wait:
    """A backoff or cool-down that has started: it ends when the next attempt is admitted."""

    kind: Kind
    attempt: int
    start: float
    delay: float


@attrs.define
class _Open:
    """A node run or an item that has started; ``attempt``/``start`` move on at each attempt."""

    node: str
    place: tuple[str, ...]
    item: int | None
    start: float
    lane: int
    attempt: int = 0
    wait: _Wait | None = None


@attrs.define
class _TaskState:
    """What one Trio task has open: its node runs (a stack per node, innermost last) and
    its items.  It holds a lane while anything is open."""

    lane: int
    nodes: dict[int, list[_Open]] = attrs.Factory(dict)
    items: dict[tuple[int, int], _Open] = attrs.Factory(dict)
    count: int = 0


class Tracer(Instrument):
    """Records the timeline of the runs it is attached to.

    Args:
        clock: the time source; ``trio.current_time`` by default, which makes
            a trace under ``trio.testing.MockClock`` exact.

    A node's run is kept by the task that runs it (its events all happen
    there), and an item by its worker task, so concurrent runs of one node
    object never mix.  A task is held only while a span of it is open.

    Memory grows with the number of spans (one per node run, per item attempt
    and per wait): about 200 bytes each, so a million-item batch costs ~200 MB.

    Example::

        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            await flow.run(shared)
        retried = [s for s in tracer.spans if s.kind == "item" and s.attempt > 0]
    """

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self.clock = clock
        self.spans: list[Span] = []
        #: ``(time, throttle name, rate)`` for each ``rate_changed`` event.
        self.rates: list[tuple[float, str, float]] = []
        self._t0: float | None = None
        # the tasks with an open span (a dict, not a WeakKeyDictionary: a weak lookup
        # costs a weakref per event); an entry goes when its task's last span ends
        self._tasks: dict[trio.lowlevel.Task, _TaskState] = {}
        self._free_lanes: list[int] = []  # a heap: the lowest free lane is taken first
        self._lanes = 0
        self._throttles: dict[int, tuple[Any, str]] = {}

    # -- time and lanes ---------------------------------------------------------

    def _now(self) -> float:
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        return now - self._t0

    def _opened_one(self) -> _TaskState:
        """The running task's state, with one more open span; a new one takes the lowest free lane."""
        task = trio.lowlevel.current_task()
        state = self._tasks.get(task)
        if state is None:
            if self._free_lanes:
                lane = heapq.heappop(self._free_lanes)
            else:
                lane = self._lanes
                self._lanes += 1
            state = self._tasks[task] = _TaskState(lane)
        state.count += 1
        return state

    def _closed_one(self, state: _TaskState) -> None:
        state.count -= 1
        if state.count == 0:
            heapq.heappush(self._free_lanes, state.lane)
            del self._tasks[trio.lowlevel.current_task()]

    def _seen(self) -> _TaskState | None:
        return self._tasks.get(trio.lowlevel.current_task())

    def _node_run(self, node: Node) -> _Open | None:
        """The innermost open run of ``node`` in this task."""
        state = self._seen()
        runs = state.nodes.get(id(node)) if state is not None else None
        return runs[-1] if runs else None

    def _item(self, node: Node, index: int) -> _Open | None:
        state = self._seen()
        return state.items.get((id(node), index)) if state is not None else None

    # -- spans ------------------------------------------------------------------

    def _add(
        self, kind: Kind, opened: _Open, attempt: int, start: float, end: float, outcome: Outcome, **extra: Any
    ) -> None:
        self.spans.append(
            Span(
                kind,
                opened.node,
                opened.place,
                opened.item,
                attempt,
                min(start, end),
                end,
                outcome,
                lane=opened.lane,
                **extra,
            )
        )

    def _end_wait(self, opened: _Open, now: float, outcome: Outcome, error: BaseException | None = None) -> None:
        wait, opened.wait = opened.wait, None
        if wait is not None and (now > wait.start or outcome != "ok"):
            self._add(
                wait.kind,
                opened,
                wait.attempt,
                wait.start,
                now,
                outcome,
                error=None if error is None else repr(error),
                delay=wait.delay,
            )

    def _failed_attempt(self, opened: _Open, kind: Kind, attempt: int, delay: float, error: Exception) -> None:
        """Attempt ``attempt`` of ``opened`` failed (``kind``: "backoff" or "cooldown" follows)."""
        now = self._now()
        outcome: Outcome = "retry" if kind == "backoff" else "throttled"
        if opened.item is None:  # a plain node's exec: an instant inside the node's span
            self._add("retry", opened, attempt, now, now, outcome, error=repr(error), delay=delay)
        else:
            self._add("item", opened, attempt, opened.start, now, outcome, error=repr(error))
        opened.wait = _Wait(kind, attempt, now, delay)

    # -- hooks ------------------------------------------------------------------

    def node_started(self, node: Node) -> None:
        state = self._opened_one()
        opened = _Open(type(node).__name__, place_of(node), None, self._now(), state.lane)
        state.nodes.setdefault(id(node), []).append(opened)

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        state = self._seen()
        runs = state.nodes.get(id(node)) if state is not None else None
        if state is None or not runs:  # attached mid-run: we never saw the start
            return
        opened = runs.pop()
        if not runs:
            del state.nodes[id(node)]
        now = self._now()
        self._end_wait(opened, now, _outcome(error), error)
        self._add(
            "node",
            opened,
            opened.attempt,
            opened.start,
            now,
            _outcome(error),
            error=None if error is None else repr(error),
            action=action,
        )
        self._closed_one(state)

    def item_started(self, node: Node, index: int) -> None:
        state = self._opened_one()
        state.items[id(node), index] = _Open(type(node).__name__, place_of(node), index, self._now(), state.lane)

    def attempt_started(self, node: Node, index: int | None, attempt: int) -> None:
        opened = self._node_run(node) if index is None else self._item(node, index)
        if opened is None:
            return
        now = self._now()
        self._end_wait(opened, now, "ok")
        opened.attempt = attempt
        if index is not None:  # an item's attempt starts when admitted, maybe after its backoff
            opened.start = now

    def item_finished(self, node: Node, index: int, error: BaseException | None, value: Any = None) -> None:
        state = self._seen()
        opened = state.items.pop((id(node), index), None) if state is not None else None
        if state is None or opened is None:
            return
        now = self._now()
        outcome = _outcome(error)
        if opened.wait is not None:  # stopped while waiting to retry: the wait is its last slice
            self._end_wait(opened, now, outcome, error)
        else:
            self.spans.append(
                Span(
                    "item",
                    opened.node,
                    opened.place,
                    index,
                    opened.attempt,
                    opened.start,
                    now,
                    outcome,
                    None if error is None else repr(error),
                    lane=opened.lane,
                )
            )
        self._closed_one(state)

    def retry_scheduled(self, node: Node, index: int | None, attempt: int, delay: float, error: Exception) -> None:
        opened = self._node_run(node) if index is None else self._item(node, index)
        if opened is not None:
            self._failed_attempt(opened, "backoff", attempt, delay, error)

    def throttled(self, node: Node, index: int | None, delay: float, error: Exception) -> None:
        opened = self._node_run(node) if index is None else self._item(node, index)
        if opened is not None:
            self._failed_attempt(opened, "cooldown", opened.attempt, delay, error)

    def rate_changed(self, throttle: Any, rate: float) -> None:
        known = self._throttles.get(id(throttle))
        if known is None or known[0] is not throttle:
            known = self._throttles[id(throttle)] = (throttle, f"{type(throttle).__name__} {len(self._throttles) + 1}")
        self.rates.append((self._now(), known[1], rate))

    # -- output -----------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """The spans as dicts (``place`` as a list), in the order they ended."""
        for span in self.spans:
            record = attrs.asdict(span)
            record["place"] = list(span.place)
            yield record

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Write one JSON object per span, one per line."""
        with open(path, "w", encoding="utf-8") as f:
            for record in self.records():
                f.write(json.dumps(record) + "\n")

    def chrome_trace(self) -> dict[str, Any]:
        """The timeline in Chrome's trace-event format (``chrome://tracing``, Perfetto).

        Node runs, item attempts and waits are complete events (``"ph": "X"``,
        category ``"node"``, ``"item"``, ``"backoff"`` or ``"cooldown"``) with
        times in microseconds, named ``Blur_1`` (a node), ``Blur_1[3]`` (item
        3's first attempt), ``Blur_1[3] attempt 1`` (its first retry, 0-based
        as everywhere), ``Blur_1[3] backoff`` or ``Blur_1[3] cool-down`` (a
        wait); their ``args`` hold the class, the place as a path
        (``"Pipeline/Grid_1/[3]/Blur_1"``), the attempt, the outcome and the
        error.  A plain node's failed attempt is an instant event
        (``"ph": "i"``).  Each lane is a named thread of process 1; a Throttle's
        rate changes are a counter track (``"ph": "C"``).
        """
        events: list[dict[str, Any]] = []
        lanes = sorted({span.lane for span in self.spans})
        events.append({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "trioflow"}})
        for lane in lanes:
            events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": lane, "args": {"name": f"lane {lane}"}})
            events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": lane, "args": {"sort_index": lane}})
        for span in sorted(self.spans, key=lambda s: (s.start, -s.end)):
            args: dict[str, Any] = {
                "node": span.node,
                "place": "/".join(span.place),
                "attempt": span.attempt,
                "outcome": span.outcome,
            }
            if span.item is not None:
                args["item"] = span.item
            if span.error is not None:
                args["error"] = span.error
            if span.kind == "node":
                args["action"] = span.action
            if span.delay is not None:
                args["delay"] = span.delay
            ts = round(span.start * 1e6, 3)
            common = {"cat": span.kind, "ts": ts, "pid": 1, "tid": span.lane, "args": args}
            if span.kind == "retry":
                word = "retry" if span.outcome == "retry" else "throttled"
                events.append({"name": f"{span.label} {word}", "ph": "i", "s": "t", **common})
                continue
            name = span.label
            if span.kind == "backoff":
                name += " backoff"
            elif span.kind == "cooldown":
                name += " cool-down"
            elif span.kind == "item" and span.attempt:
                name += f" attempt {span.attempt}"
            events.append({"name": name, "ph": "X", "dur": round((span.end - span.start) * 1e6, 3), **common})
        for at, throttle, rate in self.rates:
            events.append(
                {
                    "name": f"{throttle} rate",
                    "ph": "C",
                    "ts": round(at * 1e6, 3),
                    "pid": 1,
                    "args": {"per second": rate},
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`chrome_trace` as JSON; open the file in https://ui.perfetto.dev."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.chrome_trace(), f)
