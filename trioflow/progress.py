"""A live progress bar per running batch, built on rich (``pip install trioflow[progress]``).

:class:`ProgressBar` is an instrument: attach it to a run and every batch node,
batch flow, ``parallel_map`` and ``as_completed`` that runs gets a bar while it runs::

    from trioflow.progress import ProgressBar

    with ProgressBar() as bar, trioflow.instrumented(bar):
        await flow.run(shared)

A bar is named by its place in the graph (``Pipeline/Embed_1``: the flow, then
the node's graph id as :meth:`Flow.to_mermaid` numbers its boxes; a node run
alone by its class name; a ``parallel_map`` by its ``name=``).  It shows the
items done out of the total, the mean rate in items per second, how many items
failed (after their retries), how many retries were scheduled, how many
attempts the provider throttled and the rate an adaptive Throttle is at (for a
batch with a ``throttle``), how many items a fail-fast stop cancelled, then the
time elapsed and the time left.

The total and the time left need to know how many items there are.  An input
with a length (a list, a range, anything with ``__len__``) gives it for free;
for a generator or an async iterator pass a hint, ``ProgressBar(totals={"Embed":
10_000})``, keyed by the node's class name (or ``parallel_map``'s ``name=``),
its graph id or its whole place.  Without either a bar counts items and shows
the rate.

In a terminal the bars are drawn live by rich and put away when their batch
ends, leaving a one-line summary (done, failed, retries, throttled, rate,
elapsed, outcome) for each batch that is not part of a bigger one (a batch
inside a batch flow's run or inside another batch's item leaves its line only
when something went wrong).  When the output is not a terminal (a log file,
CI) the bar degrades to plain lines: one when a batch starts, one every
``interval`` seconds while it runs, and the same summary when it ends.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._instrument import Instrument, place_of, task_lineage

try:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column
    from rich.text import Text
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trioflow.progress needs the 'rich' package, which trioflow's 'progress' extra installs: "
        "pip install 'trioflow[progress]' (or, in a clone of the repository: pip install -e '.[progress]')"
    ) from exc

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["ProgressBar"]


def _per_second(rate: float) -> str:
    return f"{rate:.0f}/s" if rate >= 100 else f"{rate:.1f}/s"


@attrs.define(eq=False)
class _Bar:
    """The counts of one running batch."""

    name: str
    total: int | None
    started: float
    last_line: float
    throttle: Any = None
    nested: bool = False
    done: int = 0
    failed: int = 0
    retries: int = 0
    throttled: int = 0
    cancelled: int = 0
    throttle_rate: float | None = None
    task: TaskID | None = None

    def rate(self, now: float) -> float | None:
        elapsed = now - self.started
        return self.done / elapsed if elapsed > 0 else None

    def counts(self) -> str:
        return f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"

    def status(self, compact: bool = False) -> str:
        """Failures, retries, throttling, cancellations; ``compact`` (a live bar, where
        room is short) leaves out the counts that are zero."""
        parts = [("failed", self.failed), ("retries", self.retries)]
        if self.throttle is not None or self.throttled:
            parts.append(("throttled", self.throttled))
        parts.append(("cancelled", self.cancelled))
        text = " · ".join(f"{word} {count}" for word, count in parts if count or (not compact and word != "cancelled"))
        if self.throttle_rate is not None:
            rate = f"rate {_per_second(self.throttle_rate)}"
            text = f"{text} · {rate}" if text else rate
        return text

    def line(self, now: float, outcome: str = "") -> str:
        rate = self.rate(now)
        rate_text = _per_second(rate) if rate is not None else "-/s"
        elapsed = now - self.started
        text = f"{self.name}: {self.counts()} done · {self.status()} · {rate_text} · {elapsed:.1f}s"
        if outcome:
            return f"{text} · {outcome}"
        if self.total is not None and rate and self.done < self.total:
            text += f" · {(self.total - self.done) / rate:.1f}s left"
        return text


class _CountColumn(ProgressColumn):
    """``done/total``, or ``done`` when the total is unknown."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else f"{done}", style="progress.download")


class _RateColumn(ProgressColumn):
    """The mean rate since the batch started, in items per second."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        return Text(_per_second(rate) if rate is not None else "-/s", style="progress.data.speed")


class _StatusColumn(ProgressColumn):
    """Failures, retries, throttling, cancellations; red when something failed."""

    def render(self, task: Task) -> Text:
        status: str = task.fields.get("status", "")
        return Text(status, style="red" if task.fields.get("failed") else "dim")


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, trio.Cancelled):
        return "cancelled"
    return f"stopped by {type(error).__name__}"


class ProgressBar(Instrument):
    """Progress bars for the batches of the runs it is attached to (an instrument).

    Args:
        console: the rich ``Console`` to draw on; a new one on stderr by default.
        live: draw live bars (True) or print plain lines (False); by default,
            live when ``console`` is a terminal.
        interval: in plain-line mode, the seconds between two lines about one batch.
        totals: item counts for inputs without a length (a generator), keyed by
            a node's class name (``parallel_map``'s ``name=``), its graph id
            (``"Embed_1"``) or its whole place (``"Pipeline/Embed_1"``); the most
            precise key wins.  An input with ``__len__`` needs no hint (its
            length wins over one).
        auto_refresh: in live mode, let rich redraw from its own thread
            (``refresh_per_second`` times a second); when False, the bars are
            redrawn at each event instead.
        refresh_per_second: see ``auto_refresh``.
        get_time: the clock for rates and intervals (``time.monotonic``); pass
            ``trio.current_time`` with ``auto_refresh=False`` for exact, repeatable
            numbers under ``trio.testing.MockClock``.

    Use it as a context manager (or call :meth:`close`) so the display is put
    away even if the run is interrupted.  Each run of a batch has its own bar,
    even when one node object runs several times at once.

    Example::

        def pages():  # a generator: no len(), so give the count as a hint
            for n in range(2_000):
                yield f"https://example.com/{n}"

        class Fetch(trioflow.ParallelBatchNode):
            def prep(self, shared):
                return pages()

        with ProgressBar(totals={"Fetch": 2_000}) as bar, trioflow.instrumented(bar):
            await Fetch(max_concurrency=20).run(shared)
        # in a terminal, what stays is one line:
        # Fetch: 2000/2000 done · failed 0 · retries 3 · 41.7/s · 48.0s · ok
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        live: bool | None = None,
        interval: float = 10.0,
        totals: Mapping[str, int] | None = None,
        auto_refresh: bool = True,
        refresh_per_second: float = 10,
        get_time: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.interval = interval
        self.totals: dict[str, int] = dict(totals or {})
        self.get_time = get_time
        # without rich's refresh thread, redraw on each event instead
        self._redraw = not auto_refresh
        # The bars of the batches running now, by the task that runs each (a node
        # object may run in several tasks at once), innermost run of a node last.
        self._runs: weakref.WeakKeyDictionary[trio.lowlevel.Task, dict[int, list[_Bar]]] = weakref.WeakKeyDictionary()
        self._open: list[_Bar] = []
        # The text columns keep to one line; the bar takes the width left (at least 10 cells).
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10)),
            _CountColumn(table_column=Column(no_wrap=True)),
            _RateColumn(table_column=Column(no_wrap=True)),
            _StatusColumn(table_column=Column(no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(table_column=Column(no_wrap=True)),
            console=self.console,
            expand=True,
            auto_refresh=auto_refresh,
            refresh_per_second=refresh_per_second,
            get_time=get_time,
            transient=True,  # the bars go; each batch leaves its summary line instead
        )
        self._started = False

    # -- context manager ----------------------------------------------------------

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (it also stops by itself when the last batch ends).

        A batch still running (the run was interrupted before its end was
        reported) leaves its line, marked "interrupted".
        """
        now = self.get_time()
        for bar in self._open:
            self.console.print(bar.line(now, "interrupted"), markup=False, highlight=False, soft_wrap=True)
        self._open.clear()
        self._runs.clear()
        self._stop()

    def _stop(self) -> None:
        if self._started:
            self._started = False
            self._progress.stop()
            for task_id in list(self._progress.task_ids):
                self._progress.remove_task(task_id)

    # -- finding the bar of a run -------------------------------------------------

    def _bar_of(self, node: Node) -> _Bar | None:
        """The bar of the run of ``node`` that the running task works for: its own, or the
        one of the task that started it (an item's worker), and so on up."""
        key = id(node)
        for task in task_lineage():
            bars = self._runs.get(task)
            if bars is not None:
                runs = bars.get(key)
                if runs:
                    return runs[-1]
        return None

    def _inside_a_batch(self) -> bool:
        return any(self._runs.get(task) for task in task_lineage())

    def _total_hint(self, place: tuple[str, ...], node: Node) -> int | None:
        for key in ("/".join(place), place[-1], type(node).__name__):
            if key in self.totals:
                return self.totals[key]
        return None

    # -- drawing --------------------------------------------------------------------

    def _update(self, bar: _Bar, now: float) -> None:
        if bar.task is not None:
            self._progress.update(
                bar.task,
                completed=bar.done,
                rate=bar.rate(now),
                failed=bar.failed,
                status=bar.status(compact=True),
                refresh=self._redraw,
            )
        elif now - bar.last_line >= self.interval and (bar.total is None or bar.done + bar.cancelled < bar.total):
            bar.last_line = now
            self.console.print(bar.line(now), markup=False, highlight=False, soft_wrap=True)

    # -- hooks ------------------------------------------------------------------------

    def batch_started(self, node: Node, total: int | None) -> None:
        now = self.get_time()
        place = place_of(node)
        if total is None:
            total = self._total_hint(place, node)
        bar = _Bar(
            "/".join(place),
            total,
            now,
            now,
            throttle=getattr(node, "throttle", None),
            nested=self._inside_a_batch(),
        )
        self._runs.setdefault(trio.lowlevel.current_task(), {}).setdefault(id(node), []).append(bar)
        self._open.append(bar)
        if self.live:
            if not self._started:
                self._started = True
                self._progress.start()
            bar.task = self._progress.add_task(
                escape(bar.name), total=total, rate=None, failed=0, status=bar.status(compact=True)
            )
            if self._redraw:
                self._progress.refresh()
        else:
            items = f"{total} items" if total is not None else "a stream of items (no total known)"
            self.console.print(f"{bar.name}: started on {items}", markup=False, highlight=False, soft_wrap=True)

    def item_finished(self, node: Node, index: int, error: BaseException | None, value: Any = None) -> None:
        bar = self._bar_of(node)
        if bar is None:
            return
        if error is None or isinstance(error, Exception):
            bar.done += 1
            if error is not None:
                bar.failed += 1
        else:
            bar.cancelled += 1
        self._update(bar, self.get_time())

    def retry_scheduled(self, node: Node, index: int | None, attempt: int, delay: float, error: Exception) -> None:
        bar = self._bar_of(node) if index is not None else None
        if bar is not None:
            bar.retries += 1
            self._update(bar, self.get_time())

    def throttled(self, node: Node, index: int | None, delay: float, error: Exception) -> None:
        bar = self._bar_of(node) if index is not None else None
        if bar is not None:
            bar.throttled += 1
            self._update(bar, self.get_time())

    def rate_changed(self, throttle: Any, rate: float) -> None:
        now = self.get_time()
        for bar in self._open:
            if bar.throttle is throttle:
                bar.throttle_rate = rate
                self._update(bar, now)

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        bars = self._runs.get(trio.lowlevel.current_task())
        runs = bars.get(id(node)) if bars is not None else None
        if bars is None or not runs:
            return
        bar = runs.pop()
        if not runs:
            del bars[id(node)]
        self._open = [b for b in self._open if b is not bar]
        now = self.get_time()
        outcome = _outcome(error)
        if bar.task is None:
            self.console.print(bar.line(now, outcome), markup=False, highlight=False, soft_wrap=True)
            return
        self._progress.remove_task(bar.task)
        self._progress.refresh()  # so the line below is not followed by a stale frame with this bar
        if not bar.nested or bar.failed or bar.cancelled or error is not None:
            # printed above the live bars, and left in the terminal when they go
            self._progress.console.print(bar.line(now, outcome), markup=False, highlight=False, soft_wrap=True)
        if not any(b.task is not None for b in self._open):
            self._stop()

    def statistics(self) -> dict[str, Any]:
        """The counts of the batches running now, by bar name (for tests and logs)."""
        hidden = ("task", "throttle")
        return {bar.name: attrs.asdict(bar, filter=lambda a, _: a.name not in hidden) for bar in self._open}
