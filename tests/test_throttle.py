"""trioflow.Throttle: the admit stage shared by the nodes that call one provider.

Every example runs in its own ``trio.run`` on a ``MockClock(autojump_threshold=0)``,
so the times below are exact virtual seconds.  The provider is faked by nodes
whose ``exec`` sleeps and raises a throttle (an exception with a 429 and a
Retry-After) as planned, or by the token bucket of ``benchmarks.api``.
"""

from __future__ import annotations

import datetime
import email.utils
import itertools
import math
import re
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow
from benchmarks.api import Provider
from tests import strategies as sts
from trioflow._throttle import is_throttle_error, retry_after_of


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """``trio.run(main)`` on a fresh autojumping MockClock."""
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Throttled(Exception):
    """A provider's 429, shaped as the default readers expect (``status_code``, ``retry_after``)."""

    status_code = 429

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__(f"429 (retry after {retry_after})")
        if retry_after is not None:
            self.retry_after = retry_after


class Log(trioflow.Instrument):
    """What a run looked like: attempt starts, throttles (with their cool-down), rate changes."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, str, int | None, float]] = []  # (time, node, index, cost)
        self.cool_downs: list[tuple[float, float]] = []  # (from, until)
        self.rates: list[tuple[float, float]] = []
        self.rate_tasks: list[Any] = []
        self.items_in_progress = 0
        self.most_items_in_progress = 0

    def throttled(self, node: Any, index: int | None, delay: float, error: Exception) -> None:
        now = trio.current_time()
        self.cool_downs.append((now, now + delay))

    def rate_changed(self, throttle: Any, rate: float) -> None:
        self.rates.append((trio.current_time(), rate))
        self.rate_tasks.append(trio.lowlevel.current_task())

    def item_started(self, node: Any, index: int) -> None:
        self.items_in_progress += 1
        self.most_items_in_progress = max(self.most_items_in_progress, self.items_in_progress)

    def item_finished(self, node: Any, index: int, error: BaseException | None, value: Any = None) -> None:
        self.items_in_progress -= 1


Plan = tuple[float, float, int]


class Calls(trioflow.ParallelBatchNode):
    """Item ``(duration, cost, throttles)``: its first ``throttles`` attempts raise a 429 with
    Retry-After ``params["retry_after"]``; every attempt sleeps ``duration`` and is logged."""

    def prep(self, shared: dict[str, Any]) -> list[tuple[int, Plan]]:
        return list(enumerate(shared[self.params["key"]]))

    def cost(self, item: tuple[int, Plan]) -> float:
        return item[1][1]

    async def exec(self, item: tuple[int, Plan]) -> tuple[str, int]:
        index, (duration, cost, throttles) = item
        key, state = self.params["key"], self.params["state"]
        state["in_flight"] += 1
        state["most_in_flight"] = max(state["most_in_flight"], state["in_flight"])
        state["starts"].append((trio.current_time(), cost))
        tries = state["tries"].get((key, index), 0)
        state["tries"][key, index] = tries + 1
        try:
            await trio.sleep(duration)
        finally:
            state["in_flight"] -= 1
        if tries < throttles:
            raise Throttled(self.params["retry_after"])
        return key, index

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[tuple[str, int]]) -> None:
        shared[self.params["key"] + " results"] = exec_res


def new_state() -> dict[str, Any]:
    return {"in_flight": 0, "most_in_flight": 0, "starts": [], "tries": {}}


plans = st.lists(
    st.tuples(sts.durations, st.sampled_from([1.0, 2.0, 5.0]), st.integers(min_value=0, max_value=2)), max_size=8
)


class TestThrottleLimits:
    @given(
        a=plans,
        b=plans,
        max_concurrency=st.none() | st.integers(min_value=1, max_value=4),
        rate=st.none() | sts.rates,
        tokens=st.none() | st.sampled_from([5.0, 8.0, 20.0]),
        retry_after=st.sampled_from([0.0, 0.5, 3.0]),
        caps=st.tuples(sts.caps, sts.caps),
    )
    @settings(max_examples=60)
    def test_Throttle_shared_by_two_nodes_keeps_every_limit(
        self,
        a: list[tuple[float, float, int]],
        b: list[tuple[float, float, int]],
        max_concurrency: int | None,
        rate: float | None,
        tokens: float | None,
        retry_after: float,
        caps: tuple[int | None, int | None],
    ) -> None:
        """Two nodes sharing a Throttle never exceed its concurrency, its rate (any window), its token
        budget (any 60 s), start no attempt during a cool-down, and finish with throttled attempts uncounted."""
        throttle = trioflow.Throttle(
            max_concurrency=max_concurrency, requests_per_second=rate, tokens_per_minute=tokens
        )
        state = new_state()
        log = Log()
        shared: dict[str, Any] = {"a": a, "b": b}

        async def main() -> None:
            nodes = [
                Calls(
                    max_concurrency=cap,
                    throttle=throttle,
                    params={"key": key, "state": state, "retry_after": retry_after},
                )
                for key, cap in zip("ab", caps, strict=True)
            ]
            with trioflow.instrumented(log):
                async with trio.open_nursery() as nursery:
                    for node in nodes:
                        nursery.start_soon(node.run, shared)

        run(main)
        for key, plan in (("a", a), ("b", b)):
            assert shared[key + " results"] == [(key, i) for i in range(len(plan))]
        starts = sorted(state["starts"])
        assert len(starts) == sum(1 + t for _, _, t in a + b)  # each throttle one more attempt, none failed
        if max_concurrency is not None:
            assert state["most_in_flight"] <= max_concurrency
        if rate is not None:
            for (earlier, _), (later, _) in itertools.pairwise(starts):
                assert later - earlier >= 1 / rate - 1e-9
        if tokens is not None:
            for t, _ in starts:
                assert sum(c for s, c in starts if s <= t < s + 60) <= tokens + 1e-9
        for begin, end in log.cool_downs:
            assert not any(begin < t < end for t, _ in starts), (begin, end)
        stats = throttle.statistics()
        assert stats.attempts == len(starts)
        assert stats.throttled == sum(t for _, _, t in a + b) == len(log.cool_downs)
        assert stats.in_flight == 0 and stats.tasks_waiting == 0

    def test_Throttle_paces_parallel_map_and_as_completed_together(self) -> None:
        """One Throttle spaces the attempts of a parallel_map and an as_completed run as one stream."""
        throttle = trioflow.Throttle(requests_per_second=2)
        starts: list[float] = []

        async def call(item: int) -> int:
            starts.append(trio.current_time())
            await trio.sleep(0.1)
            return item

        async def main() -> None:
            async def stream() -> None:
                async with trioflow.as_completed(call, range(4), throttle=throttle) as results:
                    assert sorted([i async for i, _ in results]) == [0, 1, 2, 3]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)
                assert await trioflow.parallel_map(call, range(4), max_concurrency=4, throttle=throttle) == [0, 1, 2, 3]

        run(main)
        assert sorted(starts) == [0.5 * i for i in range(8)]

    def test_Throttle_paces_a_sequential_BatchNode_and_a_plain_Node(self) -> None:
        """A BatchNode's items and a plain Node's exec pass through the Throttle too."""
        throttle = trioflow.Throttle(requests_per_second=1)
        starts: list[float] = []

        class Seq(trioflow.BatchNode):
            def prep(self, shared: Any) -> range:
                return range(3)

            def exec(self, item: int) -> int:
                starts.append(trio.current_time())
                return item

        class One(trioflow.Node):
            def exec(self, prep_res: Any) -> None:
                starts.append(trio.current_time())

        async def main() -> None:
            await Seq(throttle=throttle).run({})
            await One(throttle=throttle).run({})

        run(main)
        assert starts == [0.0, 1.0, 2.0, 3.0]

    def test_Throttle_admits_each_run_of_a_ParallelBatchFlow(self) -> None:
        """Each run of a batch flow's sub-flow passes through the flow's Throttle: runs start 1 s apart."""
        starts: list[tuple[float, int]] = []

        class Step(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                starts.append((trio.current_time(), self.params["i"]))
                await trio.sleep(5)

        class Grid(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[dict[str, int]]:
                return [{"i": i} for i in range(3)]

        async def main() -> None:
            await Grid(start=Step(), throttle=trioflow.Throttle(requests_per_second=1), max_concurrency=3).run({})

        run(main)
        assert sorted(starts) == [(0.0, 0), (1.0, 1), (2.0, 2)]

    def test_Throttle_a_cancelled_waiter_leaves_no_hole(self) -> None:
        """A waiter cancelled before its turn books nothing: the next one starts at the first free time."""
        throttle = trioflow.Throttle(requests_per_second=1)
        started: list[tuple[str, float]] = []

        async def attempt(name: str) -> None:
            ticket = await throttle.acquire()
            started.append((name, trio.current_time()))
            throttle.release(ticket)

        async def main() -> None:
            await attempt("first")
            with trio.move_on_after(0.5):
                await attempt("cancelled")
            await trio.sleep(0.1)
            await attempt("next")

        run(main)
        assert started == [("first", 0.0), ("next", 1.0)]

    def test_Throttle_cost_above_the_budget_is_a_clear_error(self) -> None:
        """An attempt that could never fit in tokens_per_minute fails at once with a ValueError saying so."""
        throttle = trioflow.Throttle(tokens_per_minute=100)

        async def main() -> None:
            with pytest.raises(ValueError, match="can never start under tokens_per_minute=100"):
                await throttle.acquire(101)
            with pytest.raises(TypeError, match="cost"):
                await throttle.acquire(-1)

        run(main)

    def test_Throttle_report_usage_replaces_the_estimate(self) -> None:
        """Usage reported in exec replaces the cost estimate in the budget, so more items start in the minute."""
        starts: list[float] = []

        class Estimated(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> range:
                return range(6)

            def cost(self, item: int) -> float:
                return 50

            async def exec(self, item: int) -> int:
                starts.append(trio.current_time())
                await trio.sleep(1)
                if self.params["report"]:
                    self.report_usage(10)
                return item

        async def main(report: bool) -> None:
            throttle = trioflow.Throttle(tokens_per_minute=100)
            await Estimated(max_concurrency=6, throttle=throttle, params={"report": report}).run({})
            assert throttle.statistics().tokens_used <= 100

        run(lambda: main(False))
        assert starts == [0, 0, 60, 60, 120, 120]
        starts.clear()
        run(lambda: main(True))
        # At t=1 the first two report 10 each: 20 + 50 fits, 20 + 50 + 50 does not until that one reports.
        assert starts == [0, 0, 1, 2, 3, 4]

    def test_Node_report_usage_without_a_Throttle_does_nothing(self) -> None:
        """report_usage outside an attempt under a Throttle is a no-op; a bad number is a TypeError."""

        class Plain(trioflow.Node):
            def exec(self, prep_res: Any) -> str:
                self.report_usage(12)
                return "ok"

        assert trioflow.run(Plain(), {}) is None
        with pytest.raises(TypeError, match="report_usage"):
            Plain().report_usage(-3)


    def test_Throttle_usage_reported_after_the_entry_left_the_window(self) -> None:
        """An attempt longer than a minute that reports its usage leaves the budget's count right."""
        throttle = trioflow.Throttle(tokens_per_minute=100)

        async def main() -> None:
            async with trio.open_nursery() as nursery:

                async def long_call() -> None:
                    async with throttle.admit(50):
                        await trio.sleep(70)
                        trioflow.Node().report_usage(10)

                nursery.start_soon(long_call)
                await trio.sleep(65)
                async with throttle.admit(60):  # the first entry left the window at t=60
                    pass
            assert throttle.statistics().tokens_used == 60

        run(main)

    def test_Throttle_shared_by_two_runs(self) -> None:
        """A Throttle made at import time serves a second Trio run: the first run's times (a cool-down
        on its clock) do not hold the second back; the adaptive rate it learned is kept."""
        throttle = trioflow.Throttle(requests_per_second=1, tokens_per_minute=2, adaptive=True)

        async def first() -> None:
            for _ in range(2):
                ticket = await throttle.acquire()
                throttle.release(ticket, "throttled", Throttled(100.0))
            assert throttle.statistics().cool_down_left > 99

        async def second() -> float:
            ticket = await throttle.acquire()
            throttle.release(ticket)
            return trio.current_time()

        run(first)
        learned = throttle.statistics().rate
        assert learned is not None and learned < 1
        assert run(second) == 0.0
        assert throttle.statistics().rate == learned


class TestThrottleCoolDown:
    @given(
        throttles=st.integers(min_value=0, max_value=5),
        failures=st.integers(min_value=0, max_value=3),
        extra=st.integers(min_value=1, max_value=3),
    )
    def test_Throttle_throttled_attempt_never_counts_against_max_retries(
        self, throttles: int, failures: int, extra: int
    ) -> None:
        """However many throttles come first, an item still has all of max_retries for real failures;
        cur_retry counts only those."""
        seen: list[int] = []

        class Flaky(trioflow.Node):
            async def exec(self, prep_res: Any) -> str:
                seen.append(self.cur_retry)
                await trio.sleep(0.25)
                if len(seen) <= throttles:
                    raise Throttled(1.0)
                if len(seen) <= throttles + failures:
                    raise ValueError("a real failure")
                return "done"

        node = Flaky(max_retries=failures + extra, throttle=trioflow.Throttle())

        async def main() -> None:
            await node.run({})

        run(main)
        assert seen == [0] * (throttles + 1) + list(range(1, failures + 1))

    def test_Throttle_cool_down_is_retry_after_plus_at_most_ten_percent(self) -> None:
        """A throttle pauses every user for the provider's Retry-After plus 0-10 % jitter; none gives 1 s."""
        throttle = trioflow.Throttle()

        async def main() -> None:
            pauses = []
            for after in (2.0, None, 0.0):
                ticket = await throttle.acquire()
                pauses.append(throttle.release(ticket, "throttled", Throttled(after)))
                assert throttle.statistics().cool_down_left == pauses[-1]
                await trio.sleep(3)
            assert 2.0 <= pauses[0] <= 2.2
            assert 1.0 <= pauses[1] <= 1.1
            assert pauses[2] == 0.0
            stats = throttle.statistics()
            assert (stats.throttled, stats.cool_downs, stats.cool_down_left) == (3, 2, 0.0)

        run(main)

    def test_Throttle_a_throttle_during_a_cool_down_extends_it(self) -> None:
        """A later, longer Retry-After extends the one shared cool-down; a shorter one changes nothing."""
        throttle = trioflow.Throttle()

        async def main() -> None:
            tickets = [await throttle.acquire() for _ in range(3)]
            first = throttle.release(tickets[0], "throttled", Throttled(1.0))
            assert first is not None
            assert throttle.release(tickets[1], "throttled", Throttled(0.1)) == first
            assert throttle.release(tickets[2], "throttled", Throttled(5.0)) >= 5.0  # type: ignore[operator]
            assert throttle.statistics().cool_downs == 1
            await throttle.acquire()
            assert trio.current_time() >= 5.0

        run(main)

    @pytest.mark.parametrize("limit", [0.0, 5.0, 30.0])
    def test_Node_max_throttle_wait_fails_an_item(self, limit: float) -> None:
        """An item always throttled fails with the provider's error once its cool-downs would pass
        max_throttle_wait, having waited at most that long; the other item of the batch succeeds."""

        class Always(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> list[str]:
                return ["throttled", "fine"]

            async def exec(self, item: str) -> str:
                await trio.sleep(0.5)
                if item == "throttled":
                    raise Throttled(2.0)
                return item

            def post(self, shared: Any, prep_res: Any, exec_res: list[Any]) -> None:
                shared["results"] = exec_res

        node = Always(max_concurrency=2, throttle=trioflow.Throttle(), max_throttle_wait=limit, on_error="collect")
        log = Log()
        shared: dict[str, Any] = {}

        async def main() -> None:
            with trioflow.instrumented(log):
                await node.run(shared)

        run(main)
        assert isinstance(shared["results"][0], Throttled) and shared["results"][1] == "fine"
        assert any(
            re.fullmatch(rf"Always: item 0 was throttled for .* s in all; another cool-down .* would pass "
                         rf"max_throttle_wait={limit:g} s, so this throttle counts as a failure .*", note)
            for note in getattr(shared["results"][0], "__notes__", [])
        ), "the error says the item ran out of max_throttle_wait"
        waited = sum(end - begin for begin, end in log.cool_downs)
        assert waited <= limit
        assert waited >= limit - 2.2  # it waited until one more cool-down would pass the limit

    def test_Throttle_admit_runs_your_own_attempt(self) -> None:
        """admit() acquires, tells a throttle from a failure, releases on a cancel, and reconciles usage."""
        throttle = trioflow.Throttle(tokens_per_minute=100)

        async def main() -> None:
            async with throttle.admit(30):
                trioflow.Node().report_usage(5)
            with pytest.raises(Throttled):
                async with throttle.admit():
                    raise Throttled(1.0)
            with pytest.raises(ValueError):
                async with throttle.admit():
                    raise ValueError("not a throttle")
            with trio.move_on_after(0.5):
                async with throttle.admit():
                    await trio.sleep(10)
            stats = throttle.statistics()
            assert (stats.attempts, stats.throttled, stats.failed, stats.in_flight) == (4, 1, 1, 0)
            assert stats.tokens_used == 5 + 1 + 1 + 1
            assert trio.current_time() >= 1.0  # the last admit waited out the cool-down

        run(main)


class TestThrottleAdaptive:
    @staticmethod
    def drive(
        schedule: tuple[tuple[float, float], ...], n: int, burst: float = 5, seed: int = 0, **kwargs: Any
    ) -> tuple[float, trioflow.ThrottleStatistics, Log, Provider]:
        """``n`` calls through an adaptive Throttle to a token-bucket provider with ``schedule``."""
        provider = Provider(schedule, burst=burst, seed=seed)
        log = Log()

        async def main() -> tuple[float, trioflow.ThrottleStatistics]:
            throttle = trioflow.Throttle(adaptive=True, **kwargs)

            async def call(item: int) -> int:
                return await provider.call(item, trio.sleep)

            with trioflow.instrumented(log):
                assert await trioflow.parallel_map(call, range(n), max_concurrency=200, throttle=throttle) == list(
                    range(n)
                )
            return trio.current_time(), throttle.statistics()

        elapsed, stats = run(main)
        return elapsed, stats, log, provider

    @staticmethod
    def mean_rate(rates: list[tuple[float, float]], start: float, end: float) -> float:
        """The time average of the Throttle's rate (a step function) over [start, end]."""
        total, current, at = 0.0, rates[0][1], start
        for t, rate in rates:
            if t <= start:
                current = rate
                continue
            if t >= end:
                break
            total += current * (t - at)
            current, at = rate, t
        total += current * (end - at)
        return total / (end - start)

    @pytest.mark.parametrize("seed", [0, 1])
    def test_Throttle_adaptive_converges_under_a_fixed_provider_rate(self, seed: int) -> None:
        """Against a hidden 20/s, the rate settles around 20 within 20 s; the batch ends within 1.2x
        of the ideal with at most 6 % of attempts throttled."""
        elapsed, stats, log, provider = self.drive(((0.0, 20.0),), 1200, seed=seed)
        assert elapsed <= 1.2 * provider.ideal(1200)
        assert stats.throttled / stats.attempts <= 0.06
        assert 0.75 * 20 <= self.mean_rate(log.rates, 20, elapsed) <= 1.2 * 20
        assert all(10 <= rate <= 35 for t, rate in log.rates if t > 20)

    def test_Throttle_adaptive_recovers_after_a_drop_and_a_rise(self) -> None:
        """The provider drops from 50/s to 20/s at t=20 and comes back at t=60: the rate is down to
        1.25x the new limit within 5 s, stays near it, and is back above 40/s within 10 s of the rise."""
        elapsed, stats, log, provider = self.drive(((0.0, 50.0), (20.0, 20.0), (60.0, 50.0)), 4000, burst=10)
        down = next(t for t, rate in log.rates if t > 20 and rate <= 25)
        assert down <= 25
        assert 0.75 * 20 <= self.mean_rate(log.rates, down, 60) <= 1.2 * 20
        up = next(t for t, rate in log.rates if t > 60 and rate >= 40)
        assert up <= 70
        assert elapsed <= 1.2 * provider.ideal(4000)
        assert stats.throttled / stats.attempts <= 0.06

    def test_Throttle_adaptive_never_grows_while_the_app_is_the_bottleneck(self) -> None:
        """An app asking for 1 attempt a second leaves a 10/s adaptive rate where it is; one asking
        for more than the rate makes it grow."""

        async def main(width: int) -> float:
            throttle = trioflow.Throttle(adaptive=True, requests_per_second=10)

            async def call(item: int) -> int:
                await trio.sleep(1)
                return item

            await trioflow.parallel_map(call, range(60 * width), max_concurrency=width, throttle=throttle)
            rate = throttle.statistics().rate
            assert rate is not None
            return rate

        assert run(lambda: main(1)) == 10
        assert run(lambda: main(100)) > 50

    def test_Throttle_adaptive_ignores_failures_that_are_not_throttles(self) -> None:
        """Errors that are not throttles (a 500, a bug) never cut the rate."""

        async def main() -> trioflow.ThrottleStatistics:
            throttle = trioflow.Throttle(adaptive=True, requests_per_second=4)

            async def call(item: int) -> int:
                await trio.sleep(0.1)
                raise ValueError("500 Internal Server Error")

            class Fails(trioflow.ParallelBatchNode):
                async def exec(self, item: int) -> int:
                    return await call(item)

                def prep(self, shared: Any) -> range:
                    return range(40)

            await Fails(max_concurrency=1, throttle=throttle, on_error="collect", max_retries=2).run({})
            return throttle.statistics()

        stats = run(main)
        assert stats.failed == 80 and stats.cuts == 0 and stats.rate is not None and stats.rate >= 4

    @given(
        gaps=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.5]), min_size=1, max_size=12),
        overlap=st.integers(min_value=1, max_value=3),
    )
    def test_Throttle_adaptive_cuts_at_most_once_a_second(self, gaps: list[float], overlap: int) -> None:
        """Throttles in quick succession cut the rate at most once a second, and never for an attempt
        that started before the last cut; rate_changed tells each cut at once, in the releasing task."""
        log = Log()
        cuts: list[float] = []
        releases: list[float] = []

        async def main() -> None:
            throttle = trioflow.Throttle(adaptive=True, requests_per_second=1000)
            tickets = [await throttle.acquire() for _ in range(overlap)]
            with trioflow.instrumented(log):
                for gap in gaps:
                    await trio.sleep(gap)
                    ticket = tickets.pop(0)
                    releases.append(trio.current_time())
                    before = throttle.statistics().cuts
                    throttle.release(ticket, "throttled", Throttled(0.0))
                    if throttle.statistics().cuts > before:
                        assert ticket.started >= (cuts[-1] if cuts else -math.inf)
                        cuts.append(trio.current_time())
                        assert log.rates[-1] == (cuts[-1], throttle.statistics().rate)
                        assert log.rate_tasks[-1] is trio.lowlevel.current_task()
                    tickets.append(await throttle.acquire())

        run(main)
        assert cuts and cuts[0] == releases[0]  # the first throttle cuts
        assert all(later - earlier >= 1 for earlier, later in itertools.pairwise(cuts))


class TestBackoffAdmission:
    def test_limiter_and_attempt_slot_are_free_during_backoff(self) -> None:
        """The 10 s starvation case: while an item backs off, another node sharing its
        CapacityLimiter(1) and a sibling item under its cap of 1 run at once, not 10 s later."""
        limiter = trio.CapacityLimiter(1)
        ran: dict[str, float] = {}

        class Backs(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> list[str]:
                return ["fails once", "sibling"]

            async def exec(self, item: str) -> str:
                ran.setdefault(f"{item} {self.cur_retry}", trio.current_time())
                await trio.sleep(0.5)
                if item == "fails once" and self.cur_retry == 0:
                    raise ConnectionError("reset")
                return item

        class Other(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> list[str]:
                return ["other"]

            async def exec(self, item: str) -> str:
                ran[item] = trio.current_time()
                await trio.sleep(1)
                return item

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Backs(max_concurrency=1, limiter=limiter, max_retries=2, wait=10).run, {})
                await trio.sleep(0.25)
                nursery.start_soon(Other(max_concurrency=1, limiter=limiter).run, {})

        run(main)
        # The other node waited for the token from 0.25; it gets it when the first attempt fails,
        # and the sibling (which got the cap's place then) gets it next; the retry comes at 10.5.
        assert ran == {"fails once 0": 0, "other": 0.5, "sibling 0": 1.5, "fails once 1": 10.5}

    def test_limiter_is_free_during_a_cool_down(self) -> None:
        """An item waiting out its Throttle's cool-down holds no token of a limiter it shares with a
        node that does not use that Throttle: that node's item runs at once, not after the cool-down."""
        limiter = trio.CapacityLimiter(1)
        ran: list[tuple[str, float]] = []

        async def throttled_once(item: str) -> str:
            ran.append((item, trio.current_time()))
            await trio.sleep(0.5)
            if len(ran) == 1:
                raise Throttled(10.0)
            return item

        async def other(item: str) -> str:
            ran.append((item, trio.current_time()))
            await trio.sleep(0.5)
            return item

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: trioflow.parallel_map(throttled_once, ["a"], limiter=limiter, throttle=trioflow.Throttle())
                )
                await trio.sleep(1)
                nursery.start_soon(lambda: trioflow.parallel_map(other, ["b"], limiter=limiter))

        run(main)
        assert ran[:2] == [("a", 0.0), ("b", 1.0)]
        assert ran[2][0] == "a" and 10.5 <= ran[2][1] <= 11.5

    def test_Throttle_slot_is_free_during_backoff(self) -> None:
        """An item backing off holds no place in a Throttle's max_concurrency: another node's attempt runs."""
        throttle = trioflow.Throttle(max_concurrency=1)
        ran: list[tuple[str, float]] = []

        async def flaky(item: str) -> str:
            ran.append((item, trio.current_time()))
            await trio.sleep(0.5)
            if len(ran) == 1:
                raise ConnectionError("reset")
            return item

        class Retrying(trioflow.ParallelBatchNode):
            async def exec(self, item: str) -> str:
                return await flaky(item)

            def prep(self, shared: Any) -> list[str]:
                return ["a"]

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Retrying(max_concurrency=1, max_retries=2, wait=10, throttle=throttle).run, {})
                await trio.sleep(0.25)
                nursery.start_soon(lambda: trioflow.parallel_map(flaky, ["b"], throttle=throttle))

        run(main)
        assert ran == [("a", 0.0), ("b", 0.5), ("a", 10.5)]

    @given(
        plans=sts.item_plans,
        cap=st.integers(min_value=1, max_value=3),
        extra=st.integers(min_value=0, max_value=4),
        wait=st.sampled_from([0.0, 1.0, 4.0]),
    )
    def test_ParallelBatchNode_items_in_progress_never_exceed_max_pending(
        self, plans: list[tuple[int, int]], cap: int, extra: int, wait: float
    ) -> None:
        """Items started and not finished (running or waiting to retry) stay within max_pending,
        attempts in flight within max_concurrency, and every item ends with its result."""
        state = {"in_flight": 0, "most": 0}
        log = Log()

        class Plan(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> list[tuple[int, tuple[int, int]]]:
                return list(enumerate(plans))

            async def exec(self, item: tuple[int, tuple[int, int]]) -> int:
                index, (duration, failures) = item
                state["in_flight"] += 1
                state["most"] = max(state["most"], state["in_flight"])
                try:
                    await trio.sleep(duration)
                finally:
                    state["in_flight"] -= 1
                if self.cur_retry < failures:
                    raise ValueError(index)
                return index

            def post(self, shared: Any, prep_res: Any, exec_res: list[int]) -> None:
                shared["results"] = exec_res

        shared: dict[str, Any] = {}
        node = Plan(max_concurrency=cap, max_pending=cap + extra, max_retries=4, wait=wait)

        async def main() -> None:
            with trioflow.instrumented(log):
                await node.run(shared)

        run(main)
        assert shared["results"] == list(range(len(plans)))
        assert state["most"] <= cap
        assert log.most_items_in_progress <= cap + extra


class TestThrottleObject:
    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"max_concurrency": 0}, ValueError),
            ({"max_concurrency": 1.5}, ValueError),
            ({"requests_per_second": 0}, ValueError),
            ({"requests_per_second": math.inf}, ValueError),
            ({"tokens_per_minute": -1}, ValueError),
            ({"tokens_per_minute": True}, ValueError),
            ({"adaptive": "yes"}, TypeError),
            ({"is_throttle": 429}, TypeError),
            ({"retry_after": "retry-after"}, TypeError),
        ],
    )
    def test_Throttle_rejects_bad_limits(self, kwargs: dict[str, Any], error: type[Exception]) -> None:
        """A limit that is not a positive number, or a reader that is not a function, is a clear error."""
        with pytest.raises(error, match="Throttle"):
            trioflow.Throttle(**kwargs)

    def test_Throttle_statistics_outside_a_run(self) -> None:
        """A Throttle made at import time reports its limits as plain numbers, frozen."""
        throttle = trioflow.Throttle(max_concurrency=8, tokens_per_minute=90_000, adaptive=True)
        stats = throttle.statistics()
        assert stats == trioflow.ThrottleStatistics(
            rate=10.0,
            max_concurrency=8,
            in_flight=0,
            tasks_waiting=0,
            tokens_per_minute=90_000.0,
            tokens_used=0.0,
            attempts=0,
            throttled=0,
            failed=0,
            cool_downs=0,
            cool_down_left=0.0,
            cuts=0,
        )
        with pytest.raises(AttributeError):
            stats.rate = 3  # type: ignore[misc]
        assert "adaptive" in repr(throttle) and "max_concurrency=8" in repr(throttle)

    def test_Throttle_custom_readers(self) -> None:
        """is_throttle and retry_after given to the Throttle decide what a throttle is and how long to pause."""
        throttle = trioflow.Throttle(
            is_throttle=lambda exc: "slow down" in str(exc), retry_after=lambda exc: 7.0
        )
        assert throttle.is_throttle(RuntimeError("please slow down"))
        assert not throttle.is_throttle(Throttled(1.0))
        assert not throttle.is_throttle(KeyboardInterrupt("slow down"))  # a BaseException never is
        assert throttle.retry_after(RuntimeError()) == 7.0

    def test_Throttle_tells_the_tasks_waiting(self) -> None:
        """statistics() counts the attempts waiting and in flight while they are."""
        throttle = trioflow.Throttle(max_concurrency=1)

        async def main() -> None:
            ticket = await throttle.acquire()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(throttle.acquire)
                await trio.testing.wait_all_tasks_blocked()
                stats = throttle.statistics()
                assert (stats.in_flight, stats.tasks_waiting) == (1, 1)
                throttle.release(ticket)
            assert throttle.statistics().in_flight == 1

        run(main)


# -- the default readers, against the shapes of the clients people use ------------------


def _httpx_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://api.example.test/v1/chat")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


class _RequestInfo:
    real_url = "https://api.example.test/v1/chat"


class AiohttpClientResponseError(Exception):
    """aiohttp's ClientResponseError as 3.x defines it: ``status``, ``headers``, a ``code``
    property that warns it is deprecated (so a reader that touches it fails under -W error)."""

    def __init__(self, status: int, headers: dict[str, str] | None) -> None:
        self.request_info = _RequestInfo()
        self.status = status
        self.message = "Too Many Requests"
        self.headers = headers
        self.history = ()
        self.args = (self.request_info, self.history)

    @property
    def code(self) -> int:
        warnings.warn("code property is deprecated, use status instead", DeprecationWarning, stacklevel=2)
        return self.status

    def __str__(self) -> str:
        return f"{self.status}, message={self.message!r}, url={self.request_info.real_url!r}"


class SDKStatusError(Exception):
    """openai/anthropic ``APIStatusError``: ``status_code`` and ``response`` (an httpx Response), the
    decoded ``body``, and ``code``/``type`` from it (openai) or ``type``/``error_code`` (anthropic)."""

    def __init__(self, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
        super().__init__(f"Error code: {status} - {body}")
        self.response = httpx.Response(status, headers=headers, request=httpx.Request("POST", "https://x.test"))
        self.status_code = status
        self.body = body
        self.code = body.get("code")
        self.type = body.get("type")
        self.error_code = None


class TestDefaultReaders:
    def test_httpx_HTTPStatusError(self) -> None:
        """httpx: the status and headers of exc.response; retry-after in seconds or as an HTTP date."""
        assert is_throttle_error(_httpx_error(429, {"Retry-After": "3"}))
        assert retry_after_of(_httpx_error(429, {"Retry-After": "3"})) == 3.0
        assert is_throttle_error(_httpx_error(503))
        assert not is_throttle_error(_httpx_error(500))
        assert not is_throttle_error(_httpx_error(404))
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
        when = email.utils.format_datetime(soon)
        after = retry_after_of(_httpx_error(429, {"retry-after": when}))
        assert after is not None and 25 <= after <= 31
        assert retry_after_of(_httpx_error(429, {"retry-after": "soon"})) is None

    def test_aiohttp_ClientResponseError(self) -> None:
        """aiohttp: exc.status and exc.headers, without touching the deprecated exc.code."""
        exc = AiohttpClientResponseError(429, {"Retry-After": "2"})
        assert is_throttle_error(exc) and retry_after_of(exc) == 2.0
        assert not is_throttle_error(AiohttpClientResponseError(400, None))
        assert retry_after_of(AiohttpClientResponseError(429, None)) is None

    def test_openai_and_anthropic_errors(self) -> None:
        """The SDKs' RateLimitError (429, retry-after-ms first) and anthropic's 529 are throttles;
        openai's insufficient_quota 429 is not (waiting will not help)."""
        rate_limited = SDKStatusError(
            429, {"retry-after-ms": "1500", "retry-after": "2"}, {"code": "rate_limit_exceeded", "type": "requests"}
        )
        assert is_throttle_error(rate_limited) and retry_after_of(rate_limited) == 1.5
        overloaded = SDKStatusError(529, {}, {"type": "overloaded_error"})
        assert is_throttle_error(overloaded) and retry_after_of(overloaded) is None
        quota = SDKStatusError(429, {}, {"code": "insufficient_quota", "type": "insufficient_quota"})
        assert not is_throttle_error(quota)

    def test_plain_attributes(self) -> None:
        """Any exception with status_code or a retry_after attribute (seconds or a timedelta) works."""
        assert is_throttle_error(Throttled(4.0)) and retry_after_of(Throttled(4.0)) == 4.0

        class Timed(Exception):
            retry_after = datetime.timedelta(milliseconds=250)

        assert is_throttle_error(Timed()) and retry_after_of(Timed()) == 0.25
        assert not is_throttle_error(ValueError("429 in the message is not a status"))
        assert not is_throttle_error(KeyboardInterrupt())

    def test_retry_after_of_ignores_nonsense(self) -> None:
        """Negative, infinite or boolean values are no Retry-After."""

        class Odd(Exception):
            retry_after = -1

        assert retry_after_of(Odd()) is None
        assert retry_after_of(_httpx_error(429, {"retry-after-ms": "inf"})) is None
