"""trioflow.progress.ProgressBar: a rich bar per running batch, or plain lines off a terminal."""

from __future__ import annotations

import io
from typing import Any

import pyte
import pytest
import trio
import trio.testing
from rich.console import Console

import trioflow
from tests.fakes import CoolingThrottle, Throttled
from trioflow.progress import ProgressBar


class Work(trioflow.ParallelBatchNode):
    """Item ``i`` takes ``durations.get(i, 1)`` s and fails its first ``fails.get(i, 0)`` attempts."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    async def exec(self, item: int) -> int:
        await trio.sleep(self.params.get("durations", {}).get(item, 1))
        if self.cur_retry < self.params.get("fails", {}).get(item, 0):
            raise ValueError(item)
        return item


def console(terminal: bool) -> Console:
    """A console writing to a StringIO; a terminal (escape codes, live bars) or not (plain lines)."""
    return Console(force_terminal=terminal, width=120, file=io.StringIO())


def screen(target: Console) -> list[str]:
    """The non-blank lines a terminal shows after what was written to ``target`` so far
    (pyte plays the escape codes, as a terminal would)."""
    term = pyte.Screen(120, 24)
    term.set_mode(pyte.modes.LNM)  # a tty turns "\n" into CR LF
    pyte.Stream(term).feed(target.file.getvalue())  # type: ignore[attr-defined]
    return [line.rstrip() for line in term.display if line.strip()]


def after_bar(row: str) -> str:
    """What a live row shows right of its bar, the column padding collapsed to one space."""
    return " ".join(row.rpartition("━ ")[2].split())


def lines(target: Console) -> list[str]:
    text: str = target.file.getvalue()  # type: ignore[attr-defined]
    return text.splitlines()


def bar_for(target: Console, **options: Any) -> ProgressBar:
    """A bar on the MockClock, redrawn on events (no refresh thread)."""
    return ProgressBar(target, auto_refresh=False, get_time=trio.current_time, **options)


async def run_work(
    bar: ProgressBar, items: Any, fails: dict[int, int], durations: dict[int, int] | None = None, **options: Any
) -> None:
    node = Work(**options)
    node.set_params({"fails": fails, "durations": durations or {}})
    with bar, trioflow.instrumented(bar):
        await node.run({"items": items})


async def snapshots(bar: ProgressBar, target: Console, at: list[float], run: Any) -> list[list[str]]:
    """The terminal screen at each time of ``at`` while ``run()`` runs, and after it ended."""
    shots: list[list[str]] = []
    with bar, trioflow.instrumented(bar):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            for when in at:
                await trio.sleep_until(when)
                shots.append(screen(target))
    shots.append(screen(target))
    return shots


class TestProgressBarTerminal:
    async def test_ProgressBar_in_a_terminal_draws_a_live_bar_then_leaves_a_summary_line(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """While it runs the bar shows done/total, rate, failures, retries, elapsed, time left; then one line stays."""
        out = console(terminal=True)
        node = Work(max_concurrency=5, max_retries=2, on_error="collect")
        node.set_params({"fails": {3: 2, 7: 2, 5: 1}})
        running, end = await snapshots(bar_for(out), out, [2.5], lambda: node.run({"items": list(range(10))}))
        assert len(running) == 1
        assert running[0].startswith("Work ━")
        # the live status leaves out zero counts, to fit a narrow terminal
        assert after_bar(running[0]) == "7/10 3.5/s retries 3 0:00:02 0:00:01"
        assert end == ["Work: 10/10 done · failed 2 · retries 3 · 3.3/s · 3.0s · ok"]

    async def test_ProgressBar_in_a_terminal_each_batch_of_a_flow_leaves_its_line(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Two batches in a flow, one after the other: each leaves a summary line named by its place."""

        class Save(trioflow.BatchNode):
            def prep(self, shared: Any) -> list[int]:
                return [1, 2]

            async def exec(self, item: int) -> None:
                await trio.sleep(1)

        work = Work(max_concurrency=2)
        work >> Save()
        out = console(terminal=True)
        bar = bar_for(out)
        with bar, trioflow.instrumented(bar):
            await trioflow.Flow(start=work).run({"items": [0, 1, 2, 3]})
        assert screen(out) == [
            "Flow/Work_1: 4/4 done · failed 0 · retries 0 · 2.0/s · 2.0s · ok",
            "Flow/Save_1: 2/2 done · failed 0 · retries 0 · 1.0/s · 2.0s · ok",
        ]

    async def test_ProgressBar_a_generator_has_a_count_and_no_time_left(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A generator has no length: the bar shows a count, a rate and no time left; the summary a count."""
        out = console(terminal=True)
        node = Work(max_concurrency=4)
        running, end = await snapshots(bar_for(out), out, [1.5], lambda: node.run({"items": (i for i in range(8))}))
        assert after_bar(running[0]) == "4 4.0/s 0:00:01"
        assert end == ["Work: 8 done · failed 0 · retries 0 · 4.0/s · 2.0s · ok"]

    async def test_ProgressBar_totals_hint_gives_a_generator_a_total_and_time_left(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """ProgressBar(totals={class name: n}): a generator's bar shows done/n and the time left."""
        out = console(terminal=True)
        node = Work(max_concurrency=2)
        running, end = await snapshots(
            bar_for(out, totals={"Work": 8}), out, [2.5], lambda: node.run({"items": (i for i in range(8))})
        )
        assert after_bar(running[0]) == "4/8 2.0/s 0:00:02 0:00:02"
        assert end == ["Work: 8/8 done · failed 0 · retries 0 · 2.0/s · 4.0s · ok"]

    async def test_ProgressBar_nested_batches_leave_a_line_for_a_failed_inner_batch(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Inner bars that finish while the outer runs are put away; one with failures leaves a line naming its run."""

        class Chapters(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return [{"fails": {}}, {"fails": {1: 1}}, {"fails": {}}]

        out = console(terminal=True)
        node = Chapters(start=Work(on_error="collect"), max_concurrency=3)
        bar = bar_for(out)
        running, end = await snapshots(bar, out, [0.5], lambda: node.run({"items": [0, 1, 2]}))
        assert [row.split(" ━")[0].rstrip() for row in running] == [
            "Chapters",
            "Chapters/[0]/Work_1",
            "Chapters/[1]/Work_1",
            "Chapters/[2]/Work_1",
        ]
        assert end == [
            "Chapters/[1]/Work_1: 3/3 done · failed 1 · retries 0 · 3.0/s · 1.0s · ok",
            "Chapters: 3/3 done · failed 0 · retries 0 · 3.0/s · 1.0s · ok",
        ]
        assert bar.statistics() == {}

    async def test_ProgressBar_shows_throttling_and_the_Throttle_rate(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A throttled attempt counts as "throttled" (not a retry) and the rate the Throttle moved to is shown."""
        out = console(terminal=True)
        node = Throttled(max_concurrency=2, throttle=CoolingThrottle(cool_down=2, rate=40))
        running, end = await snapshots(bar_for(out), out, [2], lambda: node.run({"plans": [(1, 1), (1, 0), (1, 0)]}))
        assert after_bar(running[0]) == "1/3 1.0/s throttled 1 · rate 20.0/s 0:00:01 -:--:--"
        assert end == ["Throttled: 3/3 done · failed 0 · retries 0 · throttled 1 · rate 20.0/s · 0.8/s · 4.0s · ok"]


class TestProgressBarPlain:
    async def test_ProgressBar_prints_plain_lines_off_a_terminal(self, autojump_clock: trio.testing.MockClock) -> None:
        """Not a terminal: a start line, a line per interval with the time left, a summary; no escape codes."""
        out = console(terminal=False)
        await run_work(bar_for(out, interval=2), list(range(6)), {1: 1}, max_concurrency=2, max_retries=2)
        assert lines(out) == [
            "Work: started on 6 items",
            "Work: 2/6 done · failed 0 · retries 1 · 1.0/s · 2.0s · 4.0s left",
            "Work: 6/6 done · failed 0 · retries 1 · 1.5/s · 4.0s · ok",
        ]

    async def test_ProgressBar_totals_hint_off_a_terminal(self, autojump_clock: trio.testing.MockClock) -> None:
        """Off a terminal too, a generator with a hint gets a total and a time left."""
        out = console(terminal=False)
        bar = bar_for(out, interval=2, totals={"Work": 6})
        await run_work(bar, (i for i in range(6)), {}, max_concurrency=2)
        assert lines(out) == [
            "Work: started on 6 items",
            "Work: 3/6 done · failed 0 · retries 0 · 1.5/s · 2.0s · 2.0s left",
            "Work: 6/6 done · failed 0 · retries 0 · 2.0/s · 3.0s · ok",
        ]

    async def test_ProgressBar_shows_a_fail_fast_stop(self, autojump_clock: trio.testing.MockClock) -> None:
        """A fail-fast batch ends with its failure, the cancelled items and what stopped it."""
        out = console(terminal=False)
        with pytest.raises(trioflow.BatchError):
            await run_work(bar_for(out), list(range(5)), {0: 1}, {1: 5, 2: 5}, max_concurrency=3)
        assert lines(out)[-1] == (
            "Work: 1/5 done · failed 1 · retries 0 · cancelled 2 · 1.0/s · 1.0s · stopped by BatchError"
        )

    async def test_ProgressBar_one_node_object_run_twice_at_once_gets_two_bars(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Two concurrent runs of one node object each count their own items (not 6/3 on one bar)."""
        out = console(terminal=False)
        node = Work(max_concurrency=3)
        bar = bar_for(out)
        with bar, trioflow.instrumented(bar):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.run, {"items": [0, 1, 2]})
                nursery.start_soon(node.run, {"items": [3, 4, 5]})
        ends = [line for line in lines(out) if "started" not in line]
        assert ends == ["Work: 3/3 done · failed 0 · retries 0 · 3.0/s · 1.0s · ok"] * 2

    async def test_ProgressBar_sees_parallel_map_and_as_completed_by_name(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """parallel_map(name=...) and as_completed(name=...) get a bar under that name."""

        async def double(x: int) -> int:
            await trio.sleep(1)
            return 2 * x

        out = console(terminal=False)
        bar = bar_for(out)
        with bar, trioflow.instrumented(bar):
            await trioflow.parallel_map(double, [1, 2, 3], max_concurrency=3, name="pages")
            async with trioflow.as_completed(double, (i for i in range(2)), name="stream") as results:
                async for _ in results:
                    pass
        assert lines(out) == [
            "pages: started on 3 items",
            "pages: 3/3 done · failed 0 · retries 0 · 3.0/s · 1.0s · ok",
            "stream: started on a stream of items (no total known)",
            "stream: 2 done · failed 0 · retries 0 · 2.0/s · 1.0s · ok",
        ]

    async def test_ProgressBar_close_mid_run_leaves_a_line_for_a_running_batch(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Closing the bar while a batch runs leaves that batch's line, marked interrupted; later events are ignored."""
        out = console(terminal=False)
        bar = bar_for(out)
        with trioflow.instrumented(bar):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Work(max_concurrency=1).run, {"items": [0, 1, 2]})
                await trio.sleep(1.5)
                bar.close()
        assert lines(out) == [
            "Work: started on 3 items",
            "Work: 1/3 done · failed 0 · retries 0 · 0.7/s · 1.5s · interrupted",
        ]

    async def test_ProgressBar_ignores_plain_nodes(self, autojump_clock: trio.testing.MockClock) -> None:
        """A node that is not a batch gets no bar, even when it retries."""

        class Flaky(trioflow.Node):
            def exec(self, prep_res: Any) -> None:
                if self.cur_retry == 0:
                    raise KeyError("once")

        out = console(terminal=False)
        bar = bar_for(out)
        with bar, trioflow.instrumented(bar):
            await Flaky(max_retries=2).run({})
        assert lines(out) == []
