"""A live progress bar per running batch, built on rich (``pip install trioflow[progress]``).

:class:`ProgressBar` is an instrument: attach it to a run and every batch node
and batch flow that runs gets a bar while it runs::

    from trioflow.progress import ProgressBar

    with ProgressBar() as bar, trioflow.instrumented(bar):
        await flow.run(shared)

A bar shows items done out of the total when ``prep``'s result has a length
(a list, a range), or a plain count when it has not (a generator); the mean
rate in items per second; how many items failed (after their retries), how many
retries were scheduled and, when a fail-fast batch stopped, how many items were
cancelled; then the time elapsed and, when the total is known, the time left.

In a terminal the bars are drawn live by rich.  When the output is not a
terminal (a log file, CI) the bar degrades to plain lines: one when a batch
starts, one every ``interval`` seconds while it runs, and a summary when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._instrument import Instrument

try:
    from rich.console import Console
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
    from rich.text import Text
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("trioflow.progress needs rich: pip install 'trioflow[progress]'") from exc

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["ProgressBar"]


@attrs.define
class _Bar:
    """The counts of one running batch."""

    name: str
    total: int | None
    started: float
    last_line: float
    done: int = 0
    failed: int = 0
    retries: int = 0
    cancelled: int = 0
    task: TaskID | None = None

    def rate(self, now: float) -> float | None:
        elapsed = now - self.started
        return self.done / elapsed if elapsed > 0 else None

    def counts(self) -> str:
        return f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"

    def status(self) -> str:
        text = f"failed {self.failed} · retries {self.retries}"
        if self.cancelled:
            text += f" · cancelled {self.cancelled}"
        return text

    def line(self, now: float, outcome: str = "") -> str:
        rate = self.rate(now)
        rate_text = f"{rate:.1f}/s" if rate is not None else "-/s"
        elapsed = now - self.started
        text = f"{self.name}: {self.counts()} done · {self.status()} · {rate_text} · {elapsed:.1f}s"
        return f"{text} · {outcome}" if outcome else text


class _CountColumn(ProgressColumn):
    """``done/total``, or ``done`` when the total is unknown."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else f"{done}", style="progress.download")


class _RateColumn(ProgressColumn):
    """The mean rate since the batch started, in items per second."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        return Text(f"{rate:.1f}/s" if rate is not None else "-/s", style="progress.data.speed")


class _StatusColumn(ProgressColumn):
    """Failures, retries, cancellations; red when something failed."""

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
        auto_refresh: in live mode, let rich redraw from its own thread
            (``refresh_per_second`` times a second) between events too.
        refresh_per_second: see ``auto_refresh``.
        get_time: the clock for rates and intervals (``time.monotonic``); pass
            ``trio.current_time`` with ``auto_refresh=False`` for exact, repeatable
            numbers under ``trio.testing.MockClock``.

    Use it as a context manager (or call :meth:`close`) so the display is put
    away even if the run is interrupted.  Bars of batches that end while others
    still run are removed; those that had failures leave a summary line.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        live: bool | None = None,
        interval: float = 10.0,
        auto_refresh: bool = True,
        refresh_per_second: float = 10,
        get_time: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.interval = interval
        self.get_time = get_time
        self._bars: dict[int, _Bar] = {}
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            _CountColumn(),
            _RateColumn(),
            _StatusColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            auto_refresh=auto_refresh,
            refresh_per_second=refresh_per_second,
            get_time=get_time,
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
        """Stop the live display (it also stops by itself when the last batch ends)."""
        if self._started:
            self._started = False
            self._progress.stop()
            for task_id in list(self._progress.task_ids):
                self._progress.remove_task(task_id)

    # -- drawing --------------------------------------------------------------------

    def _update(self, bar: _Bar, now: float) -> None:
        if bar.task is not None:
            self._progress.update(
                bar.task, completed=bar.done, rate=bar.rate(now), failed=bar.failed, status=bar.status()
            )
        elif now - bar.last_line >= self.interval and (bar.total is None or bar.done + bar.cancelled < bar.total):
            bar.last_line = now
            self.console.print(bar.line(now), markup=False, highlight=False)

    # -- hooks ------------------------------------------------------------------------

    def batch_started(self, node: Node, total: int | None) -> None:
        now = self.get_time()
        bar = self._bars[id(node)] = _Bar(type(node).__name__, total, now, now)
        if self.live:
            if not self._started:
                self._started = True
                self._progress.start()
            bar.task = self._progress.add_task(bar.name, total=total, rate=None, failed=0, status=bar.status())
        else:
            items = f"{total} items" if total is not None else "items"
            self.console.print(f"{bar.name}: started on {items}", markup=False, highlight=False)

    def item_finished(self, node: Node, index: int, error: BaseException | None, value: Any = None) -> None:
        bar = self._bars.get(id(node))
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
        bar = self._bars.get(id(node)) if index is not None else None
        if bar is not None:
            bar.retries += 1
            self._update(bar, self.get_time())

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        bar = self._bars.pop(id(node), None)
        if bar is None:
            return
        now = self.get_time()
        outcome = _outcome(error)
        if bar.task is None:
            self.console.print(bar.line(now, outcome), markup=False, highlight=False)
            return
        self._update(bar, now)
        if any(b.task is not None for b in self._bars.values()):
            # others still run: put this bar away, leaving a line if something went wrong
            self._progress.remove_task(bar.task)
            if bar.failed or bar.cancelled or error is not None:
                self._progress.console.print(bar.line(now, outcome), markup=False, highlight=False)
        else:
            self.close()

    def statistics(self) -> dict[str, Any]:
        """The counts of the batches running now, by class name (for tests and logs)."""
        return {bar.name: attrs.asdict(bar, filter=lambda a, _: a.name != "task") for bar in self._bars.values()}
