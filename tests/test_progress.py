"""trioflow.progress.ProgressBar: a rich bar per running batch, or plain lines off a terminal."""

from __future__ import annotations

import io
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

import trioflow
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
    return Console(record=True, force_terminal=terminal, width=120, file=io.StringIO())


def bar_for(target: Console, **options: Any) -> ProgressBar:
    """A bar on the MockClock, redrawn only on events (no refresh thread)."""
    return ProgressBar(target, auto_refresh=False, get_time=trio.current_time, **options)


async def run_work(
    bar: ProgressBar, items: Any, fails: dict[int, int], durations: dict[int, int] | None = None, **options: Any
) -> None:
    node = Work(**options)
    node.set_params({"fails": fails, "durations": durations or {}})
    with bar, trioflow.instrumented(bar):
        await node.run({"items": items})


class TestProgressBar:
    async def test_ProgressBar_final_frame_shows_totals_rate_failures_and_retries(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """In a terminal the last frame shows 10/10, the mean rate, the failed items and the retries."""
        out = console(terminal=True)
        bar = bar_for(out)
        await run_work(bar, list(range(10)), {3: 2, 7: 2, 5: 1}, max_concurrency=5, max_retries=2, on_error="collect")
        final = out.export_text().rstrip("\n").rsplit("Work", 1)[-1]
        assert "━" in final
        assert " 10/10 " in final
        assert " 3.3/s " in final  # 10 items in 3 s: item 5's retry runs in the third second
        assert "failed 2 · retries 3" in final

    async def test_ProgressBar_counts_without_a_total_for_a_generator(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A generator has no length: the bar shows a count and a rate."""
        out = console(terminal=True)
        await run_work(bar_for(out), (i for i in range(8)), {}, max_concurrency=4)
        final = out.export_text().rstrip("\n").rsplit("Work", 1)[-1]
        assert " 8 4.0/s failed 0 · retries 0 " in final
        assert "8/" not in final

    async def test_ProgressBar_prints_plain_lines_off_a_terminal(self, autojump_clock: trio.testing.MockClock) -> None:
        """Not a terminal: a start line, a line per interval, a summary; no bar characters."""
        out = console(terminal=False)
        await run_work(bar_for(out, interval=2), list(range(6)), {1: 1}, max_concurrency=2, max_retries=2)
        assert out.export_text().splitlines() == [
            "Work: started on 6 items",
            "Work: 2/6 done · failed 0 · retries 1 · 1.0/s · 2.0s",
            "Work: 6/6 done · failed 0 · retries 1 · 1.5/s · 4.0s · ok",
        ]

    async def test_ProgressBar_shows_a_fail_fast_stop(self, autojump_clock: trio.testing.MockClock) -> None:
        """A fail-fast batch ends with its failure, the cancelled items and what stopped it."""
        out = console(terminal=False)
        with pytest.raises(trioflow.BatchError):
            await run_work(bar_for(out), list(range(5)), {0: 1}, {1: 5, 2: 5}, max_concurrency=3)
        assert out.export_text().splitlines()[-1] == (
            "Work: 1/5 done · failed 1 · retries 0 · cancelled 2 · 1.0/s · 1.0s · stopped by BatchError"
        )

    async def test_ProgressBar_nested_batches_leave_a_line_for_a_failed_inner_batch(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Inner bars that finish while the outer runs are put away; one with failures leaves a summary line."""

        class Chapters(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return [{"fails": {}}, {"fails": {1: 1}}, {"fails": {}}]

        out = console(terminal=True)
        bar = bar_for(out)
        with bar, trioflow.instrumented(bar):
            await Chapters(start=Work(on_error="collect"), max_concurrency=3).run({"items": [0, 1, 2]})
        text = out.export_text()
        assert "Work: 3/3 done · failed 1 · retries 0 · 3.0/s · 1.0s · ok" in text
        assert text.count("Work: ") == 1  # the two clean inner bars left no line
        final = text.rstrip("\n").rsplit("Chapters", 1)[-1]
        assert " 3/3 " in final
        assert bar.statistics() == {}

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
        assert out.export_text() == ""
