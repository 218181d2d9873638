"""Properties of the worker pool under parallel_map, as_completed, ParallelBatchNode and ParallelBatchFlow.

Every property is a Hypothesis test over random item durations, caps, limits and
failure positions.  Each example runs in its own ``trio.run`` on a
``MockClock(autojump_threshold=0)`` (pytest-trio's fixtures live once per test,
not once per example), so mock time is exact and no test really sleeps.  Live
tasks are counted with a ``trio.abc.Instrument``.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import aiometer
import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow
from tests import strategies as sts

T = TypeVar("T")

APIS = ("parallel_map", "as_completed", "ParallelBatchNode", "ParallelBatchFlow")
NODE_APIS = ("ParallelBatchNode", "ParallelBatchFlow")
apis = st.sampled_from(APIS)
# The failure and cancel properties race items against each other at one mock instant, where Trio picks
# the order at random; they get more examples than the profile's default (and never fewer).
racy = settings(max_examples=max(300, settings().max_examples))
sync_kinds = st.sampled_from(["list", "generator"])


# ---------------------------------------------------------------------------
# Harness: one trio.run per example, a task counter, a probe that fakes the work.
# ---------------------------------------------------------------------------


def run_in_mock_time(main: Callable[[], Awaitable[T]], *instruments: trio.abc.Instrument) -> T:
    """``trio.run(main)`` on a fresh autojumping MockClock."""
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0), instruments=instruments)


class TaskCounter(trio.abc.Instrument):
    """Counts the tasks alive in a run."""

    def __init__(self) -> None:
        self.live: set[trio.lowlevel.Task] = set()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.live.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.live.discard(task)


class Boom(Exception):
    """The failure of one item."""

    def __init__(self, index: int) -> None:
        super().__init__(f"item {index} failed")
        self.index = index


class Flaky(Exception):
    """A failed attempt that a retry gets past."""


class Interrupt(BaseException):
    """A KeyboardInterrupt-like BaseException raised by an item."""

    def __init__(self, index: int) -> None:
        super().__init__(f"item {index} interrupted")
        self.index = index


@attrs.define
class Meter:
    """How many items are inside ``exec`` now, and at most."""

    inside: int = 0
    peak: int = 0

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            yield
        finally:
            self.inside -= 1


@attrs.define(eq=False)
class Probe:
    """The fake work of one batch: item ``i`` sleeps ``durations[i]`` mock seconds per attempt
    and returns ``f"r{i}"``; it records everything the properties look at."""

    durations: list[float]
    failing: frozenset[int] = frozenset()  # items that fail on every attempt
    failed_attempts: list[int] | None = None  # item i fails its first failed_attempts[i] attempts
    fail_with: Callable[[int], BaseException] = Boom
    shared_meter: Meter | None = None  # a meter shared with another batch (a shared limiter)
    meter: Meter = attrs.Factory(Meter)
    starts: list[float] = attrs.Factory(list)  # mock time of each item's first attempt
    attempts: Counter[int] = attrs.Factory(Counter)
    finished: dict[int, float] = attrs.Factory(dict)  # index -> mock time it returned
    finalized: set[int] = attrs.Factory(set)  # items whose ``finally`` ran
    received: dict[int, Any] = attrs.Factory(dict)  # what as_completed handed out
    consume_delay: float = 0.0  # how long the as_completed consumer works on each result
    loop_ended: bool = False  # the as_completed consumer's loop ran to its end
    fallbacks: list[int] = attrs.Factory(list)
    posts: int = 0
    pulled: int = 0
    ahead: int = 0  # the most of (pulled - finished) at any pull
    failed_at: float | None = None  # mock time of the first failure
    pulled_at_failure: int | None = None
    plain: bool = False  # items of duration 0 run as a plain ``def`` call (no checkpoint inside)
    input_started: bool = False  # the generator input's body started (its first item was asked for)
    input_closed: bool = False  # the generator input's ``finally`` ran
    returned: set[int] = attrs.Factory(set)  # items whose exec returned a result (sync or async)

    @property
    def n(self) -> int:
        return len(self.durations)

    def expected(self) -> list[str]:
        return [result(i) for i in range(self.n)]

    async def work(self, i: int, attempt: int = 0) -> str:
        self.attempts[i] += 1
        if attempt == 0:
            self.starts.append(trio.current_time())
        shared = self.shared_meter.entered() if self.shared_meter else contextlib.nullcontext()
        try:
            with self.meter.entered(), shared:
                await trio.sleep(self.durations[i])
                return self._outcome(i, attempt)
        finally:
            self.finalized.add(i)

    def work_any(self, i: int, attempt: int = 0) -> Any:
        """``work`` as a plain ``def``: done at once (no checkpoint) for a zero-duration item when
        the probe is ``plain``, else the coroutine of ``work`` (the caller awaits it)."""
        if not (self.plain and self.durations[i] == 0):
            return self.work(i, attempt)
        self.attempts[i] += 1
        if attempt == 0:
            self.starts.append(trio.current_time())
        try:
            return self._outcome(i, attempt)
        finally:
            self.finalized.add(i)

    def _outcome(self, i: int, attempt: int) -> str:
        if self.failed_attempts is not None and attempt < self.failed_attempts[i]:
            raise Flaky(f"item {i} attempt {attempt}")
        if i in self.failing:
            if self.failed_at is None:
                self.failed_at = trio.current_time()
                self.pulled_at_failure = self.pulled
            raise self.fail_with(i) from LookupError(f"cause of item {i}")
        self.finished[i] = trio.current_time()
        self.returned.add(i)
        return result(i)

    def fn(self) -> Callable[[int], Any]:
        """The function of one item for parallel_map/as_completed: ``work``, or ``work_any`` when plain."""
        return self.work_any if self.plain else self.work

    # -- the input, which records how far it was pulled -------------------------------

    def _pull(self, i: int) -> int:
        self.pulled += 1
        self.ahead = max(self.ahead, self.pulled - len(self.finished))
        return i

    def _generate(self) -> Iterator[int]:
        self.input_started = True
        try:
            for i in range(self.n):
                yield self._pull(i)
        finally:
            self.input_closed = True

    async def _agenerate(self) -> AsyncIterator[int]:
        self.input_started = True
        try:
            for i in range(self.n):
                await trio.lowlevel.checkpoint()
                yield self._pull(i)
        finally:
            self.input_closed = True

    def items(self, kind: str) -> Iterable[int] | AsyncIterator[int]:
        if kind == "list":
            self.pulled = self.n
            return list(range(self.n))
        return self._generate() if kind == "generator" else self._agenerate()

    def param_sets(self, kind: str) -> Iterable[dict[str, int]] | AsyncIterator[dict[str, int]]:
        if kind == "list":
            self.pulled = self.n
            return [{"i": i} for i in range(self.n)]
        if kind == "generator":
            return self._param_sets()
        return self._aparam_sets()

    def _param_sets(self) -> Iterator[dict[str, int]]:
        self.input_started = True
        try:
            for i in range(self.n):
                yield {"i": self._pull(i)}
        finally:
            self.input_closed = True

    async def _aparam_sets(self) -> AsyncIterator[dict[str, int]]:
        self.input_started = True
        try:
            for i in range(self.n):
                await trio.lowlevel.checkpoint()
                yield {"i": self._pull(i)}
        finally:
            self.input_closed = True


def result(i: int) -> str:
    return f"r{i}"


@attrs.define(slots=False, eq=False, kw_only=True)
class ProbeNode(trioflow.ParallelBatchNode):
    """A ParallelBatchNode over the probe's items."""

    probe: Probe
    kind: str = "list"

    def prep(self, shared: dict[str, Any]) -> Any:
        return self.probe.items(self.kind)

    async def exec(self, prep_res: int) -> str:
        return await self.probe.work(prep_res, self.cur_retry)

    def exec_fallback(self, prep_res: int, exc: Exception) -> Any:
        self.probe.fallbacks.append(prep_res)
        raise exc

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        self.probe.posts += 1
        shared["results"] = exec_res
        return "done"


@attrs.define(slots=False, eq=False, kw_only=True)
class ProbeStep(trioflow.Node):
    """The one node of ProbeFlow's sub-flow: item ``params["i"]``."""

    probe: Probe

    def prep(self, shared: dict[str, Any]) -> int:
        i: int = self.params["i"]
        return i

    async def exec(self, prep_res: int) -> str:
        return await self.probe.work(prep_res, self.cur_retry)

    def exec_fallback(self, prep_res: int, exc: Exception) -> Any:
        self.probe.fallbacks.append(prep_res)
        raise exc

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: str) -> None:
        shared.setdefault("by_index", {})[prep_res] = exec_res


@attrs.define(slots=False, eq=False, kw_only=True)
class ProbeFlow(trioflow.ParallelBatchFlow):
    """A ParallelBatchFlow running ProbeStep once per item of the probe."""

    probe: Probe
    kind: str = "list"

    def prep(self, shared: dict[str, Any]) -> Any:
        return self.probe.param_sets(self.kind)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        self.probe.posts += 1
        by_index = shared.get("by_index", {})
        shared["results"] = [by_index.get(i) for i in range(self.probe.n)]
        return "done"


class PlainProbeNode(ProbeNode):
    """ProbeNode with a plain ``def exec``: zero-duration items return at once, no checkpoint inside."""

    def exec(self, prep_res: int) -> Any:  # type: ignore[override]  # a result, or a coroutine to await
        return self.probe.work_any(prep_res, self.cur_retry)


class PlainProbeStep(ProbeStep):
    """ProbeStep with a plain ``def exec``, as PlainProbeNode."""

    def exec(self, prep_res: int) -> Any:  # type: ignore[override]
        return self.probe.work_any(prep_res, self.cur_retry)


async def run_batch(
    api: str,
    probe: Probe,
    kind: str = "list",
    *,
    shared: dict[str, Any] | None = None,
    max_retries: int = 1,
    wait: float = 0.0,
    **options: Any,
) -> list[Any]:
    """Run the probe's items through ``api``; return the results in input order."""
    shared = {} if shared is None else shared
    if api == "parallel_map":
        assert max_retries == 1
        return await trioflow.parallel_map(probe.fn(), probe.items(kind), **options)
    if api == "as_completed":
        assert max_retries == 1
        async with trioflow.as_completed(probe.fn(), probe.items(kind), **options) as results:
            async for index, value in results:
                assert index not in probe.received
                probe.received[index] = value
                await trio.sleep(probe.consume_delay)
            probe.loop_ended = True
        return [probe.received[i] for i in range(len(probe.received))]
    if api == "ParallelBatchNode":
        node_cls = PlainProbeNode if probe.plain else ProbeNode
        node = node_cls(probe=probe, kind=kind, max_retries=max_retries, wait=wait, **options)
        assert await node.run(shared) == "done"
        return list(shared["results"])
    assert api == "ParallelBatchFlow"
    step_cls = PlainProbeStep if probe.plain else ProbeStep
    flow = ProbeFlow(
        start=step_cls(probe=probe, max_retries=max_retries, wait=wait), probe=probe, kind=kind, **options
    )
    assert await flow.run(shared) == "done"
    return list(shared["results"])


def finish_times(durations: list[float], cap: int | None) -> list[float]:
    """When each item finishes if free workers take items in input order (a greedy pool)."""
    if cap is None:
        return list(durations)
    free = [0.0] * cap
    times = []
    for d in durations:
        start = heapq.heappop(free)
        times.append(start + d)
        heapq.heappush(free, start + d)
    return times


# ---------------------------------------------------------------------------
# Order
# ---------------------------------------------------------------------------


class TestOrder:
    @given(durations=sts.duration_lists(), cap=sts.caps, rate=st.none() | sts.rates, kind=sts.input_kinds)
    def test_parallel_map_keeps_input_order_like_aiometer(
        self, durations: list[float], cap: int | None, rate: float | None, kind: str
    ) -> None:
        """parallel_map returns results in input order, equal to aiometer.run_all's, in the same mock time."""

        async def main() -> tuple[list[str], float, list[str], float]:
            probe = Probe(durations)
            t0 = trio.current_time()
            ours = await trioflow.parallel_map(probe.work, probe.items(kind), max_concurrency=cap, max_per_second=rate)
            ours_time = trio.current_time() - t0
            oracle = Probe(durations)
            t0 = trio.current_time()
            theirs = await aiometer.run_all(
                [functools.partial(oracle.work, i) for i in range(len(durations))],
                max_at_once=cap,
                max_per_second=rate,
            )
            return ours, ours_time, theirs, trio.current_time() - t0

        ours, ours_time, theirs, theirs_time = run_in_mock_time(main)
        assert ours == theirs == [result(i) for i in range(len(durations))]
        if rate is None or cap is not None:  # with no cap, Trio's scheduling (not input order) deals the rate's slots
            assert ours_time == theirs_time
        if rate is None:
            assert ours_time == max(finish_times(durations, cap), default=0.0)

    @given(
        data=st.data(),
        api=st.sampled_from(NODE_APIS),
        durations=sts.duration_lists(),
        cap=sts.caps,
        kind=sts.input_kinds,
        wait=st.sampled_from([0.0, 0.5, 2.0]),
    )
    def test_parallel_nodes_keep_input_order_through_retries(
        self, data: st.DataObject, api: str, durations: list[float], cap: int | None, kind: str, wait: float
    ) -> None:
        """ParallelBatchNode and ParallelBatchFlow keep input order when items fail some attempts and retry."""
        max_retries, failed = data.draw(sts.retry_plans(len(durations)))
        probe = Probe(durations, failed_attempts=failed)
        got = run_in_mock_time(
            lambda: run_batch(api, probe, kind, max_retries=max_retries, wait=wait, max_concurrency=cap)
        )
        assert got == probe.expected()
        assert probe.attempts == Counter({i: f + 1 for i, f in enumerate(failed)})
        assert probe.fallbacks == []

    @given(durations=sts.duration_lists(), cap=sts.caps, kind=sts.input_kinds)
    def test_as_completed_yields_in_completion_order(self, durations: list[float], cap: int | None, kind: str) -> None:
        """as_completed yields every (index, value) once, in the order the items finish, as a greedy pool would."""
        probe = Probe(durations)
        order: list[int] = []

        async def main() -> None:
            async with trioflow.as_completed(probe.work, probe.items(kind), max_concurrency=cap) as results:
                async for index, value in results:
                    assert value == result(index)
                    order.append(index)

        run_in_mock_time(main)
        assert sorted(order) == list(range(len(durations)))
        assert probe.finished == dict(enumerate(finish_times(durations, cap)))
        times = [probe.finished[i] for i in order]
        assert times == sorted(times)


# ---------------------------------------------------------------------------
# Cap, shared limiter, rate
# ---------------------------------------------------------------------------


class TestCap:
    @given(api=apis, durations=sts.duration_lists(), cap=st.integers(1, 6), kind=sts.input_kinds)
    def test_max_concurrency_bounds_items_inside_exec(
        self, api: str, durations: list[float], cap: int, kind: str
    ) -> None:
        """No more than max_concurrency items are inside exec at once, and a list fills the cap."""
        probe = Probe(durations)
        got = run_in_mock_time(lambda: run_batch(api, probe, kind, max_concurrency=cap))
        assert got == probe.expected()
        assert probe.meter.peak <= cap
        if kind == "list" and api != "ParallelBatchFlow" and all(durations):
            assert probe.meter.peak == min(cap, len(durations))

    @given(
        durations_a=sts.duration_lists(),
        durations_b=sts.duration_lists(),
        cap_a=sts.caps,
        cap_b=sts.caps,
        tokens=sts.tokens,
    )
    def test_shared_limiter_bounds_two_ParallelBatchNodes_together(
        self,
        durations_a: list[float],
        durations_b: list[float],
        cap_a: int | None,
        cap_b: int | None,
        tokens: int,
    ) -> None:
        """Two ParallelBatchNodes sharing one CapacityLimiter never hold more items in exec than its tokens."""
        together = Meter()
        a = Probe(durations_a, shared_meter=together)
        b = Probe(durations_b, shared_meter=together)
        shared_a: dict[str, Any] = {}
        shared_b: dict[str, Any] = {}

        async def main() -> None:
            limiter = trio.CapacityLimiter(tokens)
            node_a = ProbeNode(probe=a, max_concurrency=cap_a, limiter=limiter)
            node_b = ProbeNode(probe=b, max_concurrency=cap_b, limiter=limiter)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node_a.run, shared_a)
                nursery.start_soon(node_b.run, shared_b)
            assert limiter.borrowed_tokens == 0

        run_in_mock_time(main)
        assert shared_a["results"] == a.expected()
        assert shared_b["results"] == b.expected()
        assert together.peak <= tokens
        for probe, cap in ((a, cap_a), (b, cap_b)):
            assert probe.meter.peak <= (cap or tokens)

    @given(api=apis, durations=sts.duration_lists(), tokens=sts.tokens, kind=sts.input_kinds)
    def test_limiter_alone_bounds_items_inside_exec(
        self, api: str, durations: list[float], tokens: int, kind: str
    ) -> None:
        """With no max_concurrency, a limiter alone bounds the items inside exec, and a list fills it."""
        probe = Probe(durations)

        async def main() -> list[Any]:
            return await run_batch(api, probe, kind, limiter=trio.CapacityLimiter(tokens))

        assert run_in_mock_time(main) == probe.expected()
        assert probe.meter.peak <= tokens
        if kind == "list" and api != "ParallelBatchFlow" and all(durations):
            assert probe.meter.peak == min(tokens, len(durations))

    @given(
        api=apis,
        durations=sts.duration_lists(min_size=1),
        cap=sts.caps,
        rate=sts.rates,
        tokens=st.none() | sts.tokens,
        hog=st.sampled_from([0.0, 1.0, 3.0]),
    )
    def test_max_per_second_spaces_item_starts(
        self, api: str, durations: list[float], cap: int | None, rate: float, tokens: int | None, hog: float
    ) -> None:
        """Item starts are at least 1/max_per_second apart, also when a shared limiter was held elsewhere."""
        probe = Probe(durations)

        async def main() -> list[Any]:
            limiter = trio.CapacityLimiter(tokens) if tokens is not None else None
            if limiter is None or hog == 0:
                return await run_batch(api, probe, max_concurrency=cap, limiter=limiter, max_per_second=rate)
            got: list[Any] = []

            async def run() -> None:
                got.extend(await run_batch(api, probe, max_concurrency=cap, limiter=limiter, max_per_second=rate))

            async with trio.open_nursery() as nursery:
                hogs = [object() for _ in range(tokens or 0)]
                for borrower in hogs:  # another node holds every token for `hog` seconds
                    limiter.acquire_on_behalf_of_nowait(borrower)
                nursery.start_soon(run)
                await trio.sleep(hog)
                for borrower in hogs:
                    limiter.release_on_behalf_of(borrower)
            return got

        assert run_in_mock_time(main) == probe.expected()
        starts = sorted(probe.starts)
        assert len(starts) == len(durations)
        interval = 1 / rate
        assert all(later - earlier >= interval for earlier, later in itertools.pairwise(starts))
        if cap is None and tokens is None:  # nothing else holds them back: one start per interval
            assert starts == [k * interval for k in range(len(durations))]


# ---------------------------------------------------------------------------
# Lazy input
# ---------------------------------------------------------------------------


class TestLazyInput:
    @given(
        api=apis,
        durations=sts.duration_lists(),
        bound=st.integers(1, 6),
        by_limiter=st.booleans(),
        kind=st.sampled_from(["generator", "async generator"]),
    )
    def test_input_is_pulled_only_as_workers_free_up(
        self, api: str, durations: list[float], bound: int, by_limiter: bool, kind: str
    ) -> None:
        """A generator is never pulled more than the cap (or the limiter's tokens) ahead of finished items."""
        probe = Probe(durations)

        async def main() -> list[Any]:
            if by_limiter:
                return await run_batch(api, probe, kind, limiter=trio.CapacityLimiter(bound))
            return await run_batch(api, probe, kind, max_concurrency=bound)

        assert run_in_mock_time(main) == probe.expected()
        assert probe.pulled == len(durations)
        assert probe.ahead <= bound


# ---------------------------------------------------------------------------
# Failures: fail fast, fallback, collect
# ---------------------------------------------------------------------------


def item_index_of(exc: BaseException) -> int:
    """The item index in the note that the pool adds to a failed item's exception."""
    pattern = re.compile(r"raised by (?:item|param set) (\d+) ")
    notes = [m for note in getattr(exc, "__notes__", []) if (m := pattern.match(note))]
    assert len(notes) == 1, exc.__notes__ if hasattr(exc, "__notes__") else "no notes"
    return int(notes[0].group(1))


def leaves(group: BaseException) -> list[BaseException]:
    """The exceptions at the leaves of a (nested) exception group."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


limiter_tokens = st.none() | st.integers(1, 4)


def limiter_of(tokens: int | None) -> trio.CapacityLimiter | None:
    """A fresh shared limiter with ``tokens`` tokens, or None (made inside the run: it needs Trio)."""
    return None if tokens is None else trio.CapacityLimiter(tokens)


def check_invariants(
    probe: Probe, kind: str, limiter: trio.CapacityLimiter | None, live: int, baseline: int
) -> None:
    """Invariants (1), (2) and (4) of issue 8, after any run, failed, cancelled or not: every shared
    limiter token is back, no task of ours is left, a generator input was closed (its ``finally``
    ran).  (3) and (5) depend on how the run ended: each test asserts them itself."""
    assert live == baseline, "a task was left behind"
    if limiter is not None:
        assert limiter.borrowed_tokens == 0, "a limiter token leaked"
    if kind != "list" and probe.input_started:  # (a generator never started has no finally to run)
        assert probe.input_closed, "the generator input was left open"


class TestFailFast:
    @racy
    @given(
        data=st.data(),
        api=apis,
        durations=sts.duration_lists(min_size=1),
        cap=sts.caps,
        kind=sts.input_kinds,
        consume_delay=st.sampled_from([0.0, 0.5]),
        plain=st.booleans(),
        tokens=limiter_tokens,
    )
    def test_first_failure_cancels_the_rest_and_raises_BatchError(
        self,
        data: st.DataObject,
        api: str,
        durations: list[float],
        cap: int | None,
        kind: str,
        consume_delay: float,
        plain: bool,
        tokens: int | None,
    ) -> None:
        """on_error="raise": the first failure cancels in-flight items, pulls and starts nothing more,
        leaves no task, skips post, and raises a BatchError with indexed notes and the completed results
        (every result an exec returned, plain def ones included); limiter tokens back, input closed."""
        failing = data.draw(sts.failure_positions(len(durations)))
        probe = Probe(durations, failing=failing, consume_delay=consume_delay, plain=plain)
        shared: dict[str, Any] = {}
        counter = TaskCounter()
        limiter: trio.CapacityLimiter | None = None

        async def main() -> tuple[trioflow.BatchError, int, int]:
            nonlocal limiter
            limiter = limiter_of(tokens)
            baseline = len(counter.live)
            with pytest.raises(trioflow.BatchError) as info:
                await run_batch(api, probe, kind, shared=shared, max_concurrency=cap, limiter=limiter)
            return info.value, baseline, len(counter.live)

        err, baseline, live = run_in_mock_time(main, counter)
        check_invariants(probe, kind, limiter, live, baseline)
        # the inner exceptions: the failures, each noted with its item index
        assert err.exceptions
        for exc in err.exceptions:
            assert isinstance(exc, Boom)
            assert exc.index in probe.failing
            assert item_index_of(exc) == exc.index
        # as_completed: the iteration ends quietly, the BatchError comes at the block's exit
        assert probe.loop_ended == (api == "as_completed")
        # completed: exactly the items that finished (as_completed: those not handed out yet),
        # with their results (a ParallelBatchFlow's are its sub-flows' last actions)
        # (invariant 3: every result an exec returned is kept; a batch flow's item is a whole
        # sub-flow run, finished once its step's post ran, and its result is the run's last action)
        if api == "ParallelBatchFlow":
            finished: dict[int, Any] = {i: None for i in shared.get("by_index", {})}
        else:
            finished = {i: result(i) for i in probe.returned}
        assert probe.received.keys().isdisjoint(err.completed)
        assert {**probe.received, **err.completed} == finished
        # nothing finished, was pulled or started after the first failure; every started item's finally ran
        assert probe.failed_at is not None
        assert all(t <= probe.failed_at for t in probe.finished.values())
        assert all(t <= probe.failed_at for t in probe.starts)
        assert probe.pulled == probe.pulled_at_failure
        assert probe.finalized == set(probe.attempts)
        # post was not called: shared holds nothing of the batch's result
        assert probe.posts == 0
        assert "results" not in shared

    @given(data=st.data(), api=st.sampled_from(NODE_APIS), durations=sts.duration_lists(min_size=1), cap=sts.caps)
    def test_exec_fallback_that_returns_rescues_the_item(
        self, data: st.DataObject, api: str, durations: list[float], cap: int | None
    ) -> None:
        """A failed item whose exec_fallback returns a value takes that value; the batch goes on and post runs."""
        failing = data.draw(sts.failure_positions(len(durations)))
        probe = Probe(durations, failing=failing)

        class Rescuing(ProbeNode):
            def exec_fallback(self, prep_res: int, exc: Exception) -> Any:
                assert isinstance(exc, Boom) and exc.index == prep_res
                self.probe.fallbacks.append(prep_res)
                return f"fallback{prep_res}"

        class RescuingStep(ProbeStep):
            exec_fallback = Rescuing.exec_fallback

        async def main() -> list[Any]:
            shared: dict[str, Any] = {}
            if api == "ParallelBatchNode":
                await Rescuing(probe=probe, max_concurrency=cap, max_retries=2).run(shared)
            else:
                await ProbeFlow(start=RescuingStep(probe=probe, max_retries=2), probe=probe, max_concurrency=cap).run(
                    shared
                )
            return list(shared["results"])

        got = run_in_mock_time(main)
        assert got == [f"fallback{i}" if i in failing else result(i) for i in range(len(durations))]
        assert sorted(probe.fallbacks) == sorted(failing)
        assert all(probe.attempts[i] == 2 for i in failing)
        assert probe.posts == 1


class TestCollect:
    @given(data=st.data(), api=st.sampled_from(NODE_APIS), durations=sts.duration_lists(), cap=sts.caps)
    def test_on_error_collect_puts_each_exception_in_its_slot(
        self, data: st.DataObject, api: str, durations: list[float], cap: int | None
    ) -> None:
        """on_error="collect": a failed item's exception object stands in its slot, the others have results,
        and post is called."""
        failing = data.draw(sts.failure_positions(len(durations), min_size=0))
        probe = Probe(durations, failing=failing)
        shared: dict[str, Any] = {}
        run_in_mock_time(lambda: run_batch(api, probe, shared=shared, max_concurrency=cap, on_error="collect"))
        assert probe.posts == 1
        if api == "ParallelBatchFlow":  # a failed sub-flow writes nothing; the others wrote theirs
            assert shared["results"] == [None if i in failing else result(i) for i in range(len(durations))]
            return
        slots = shared["results"]
        assert len(slots) == len(durations)
        for i, slot in enumerate(slots):
            if i in failing:
                assert isinstance(slot, Boom) and slot.index == i
                assert item_index_of(slot) == i
            else:
                assert slot == result(i)


# ---------------------------------------------------------------------------
# Cancellation and BaseExceptions
# ---------------------------------------------------------------------------

cancel_instants = st.sampled_from([k / 4 for k in range(0, 41)]) | st.floats(0, 12)


class TestCancellation:
    @racy
    @given(
        api=apis,
        durations=sts.duration_lists(),
        cap=sts.caps,
        kind=sts.input_kinds,
        cancel_at=cancel_instants,
        in_flow=st.booleans(),
        plain=st.booleans(),
        tokens=limiter_tokens,
    )
    def test_outer_cancel_leaves_no_task_and_no_half_applied_post(
        self,
        api: str,
        durations: list[float],
        cap: int | None,
        kind: str,
        cancel_at: float,
        in_flow: bool,
        plain: bool,
        tokens: int | None,
    ) -> None:
        """An outer move_on_after at any instant leaves no task behind, no partial post, nothing wrapped
        (the Cancelled comes out bare), every limiter token back, the input closed, and never retries
        the cancelled items nor hands them to exec_fallback."""
        probe = Probe(durations, plain=plain)
        shared: dict[str, Any] = {}
        counter = TaskCounter()
        max_retries = 1 if api in ("parallel_map", "as_completed") else 3
        limiter: trio.CapacityLimiter | None = None
        bare_cancel = False

        async def main() -> tuple[bool, int, int]:
            nonlocal limiter, bare_cancel
            limiter = limiter_of(tokens)
            baseline = len(counter.live)
            with trio.move_on_after(cancel_at) as scope:
                try:
                    if in_flow and api == "ParallelBatchNode":
                        node = ProbeNode(
                            probe=probe, kind=kind, max_concurrency=cap, max_retries=max_retries, limiter=limiter
                        )
                        await trioflow.Flow(start=node).run(shared)
                    else:
                        got = await run_batch(
                            api, probe, kind, shared=shared, max_retries=max_retries, max_concurrency=cap,
                            limiter=limiter,
                        )
                        shared["returned"] = got
                except trio.Cancelled:
                    bare_cancel = True
                    raise
            return scope.cancelled_caught, baseline, len(counter.live)

        cancelled, baseline, live = run_in_mock_time(main, counter)
        check_invariants(probe, kind, limiter, live, baseline)
        assert bare_cancel == cancelled  # (invariant 5: a cancel leaves every entry point bare)
        assert probe.posts in (0, 1)
        if not cancelled:
            assert probe.finished.keys() == set(range(len(durations)))
        if api in NODE_APIS:  # post ran whole (with every result) or not at all
            if probe.posts or not cancelled:
                assert shared["results"] == probe.expected()
            else:
                assert "results" not in shared
        if "returned" in shared:
            assert shared["returned"] == probe.expected()
        assert probe.finalized == set(probe.attempts)
        assert set(probe.attempts.values()) <= {1}
        assert probe.fallbacks == []

    @racy
    @given(
        data=st.data(),
        api=apis,
        durations=sts.duration_lists(min_size=1),
        cap=sts.caps,
        kind=sts.input_kinds,
        plain=st.booleans(),
        tokens=limiter_tokens,
    )
    def test_BaseException_in_exec_is_never_retried_nor_given_to_exec_fallback(
        self,
        data: st.DataObject,
        api: str,
        durations: list[float],
        cap: int | None,
        kind: str,
        plain: bool,
        tokens: int | None,
    ) -> None:
        """A KeyboardInterrupt-like BaseException from an item is not retried, not given to exec_fallback,
        not put in a BatchError: it propagates (bare when alone, with the cause it was raised from) and
        leaves no task, no limiter token, no open input."""
        failing = data.draw(sts.failure_positions(len(durations)))
        probe = Probe(durations, failing=failing, fail_with=Interrupt, plain=plain)
        counter = TaskCounter()
        max_retries = 1 if api in ("parallel_map", "as_completed") else 3
        limiter: trio.CapacityLimiter | None = None

        async def main() -> tuple[BaseException, int, int]:
            nonlocal limiter
            limiter = limiter_of(tokens)
            baseline = len(counter.live)
            try:
                await run_batch(api, probe, kind, max_retries=max_retries, max_concurrency=cap, limiter=limiter)
            except BaseException as exc:  # the point: it is not an Exception
                return exc, baseline, len(counter.live)
            raise AssertionError("the interrupt did not propagate")

        exc, baseline, live = run_in_mock_time(main, counter)
        check_invariants(probe, kind, limiter, live, baseline)
        if not isinstance(exc, BaseExceptionGroup):  # (invariant 5: bare, cause and context intact)
            assert isinstance(exc, Interrupt)
            assert isinstance(exc.__cause__, LookupError) and str(exc.__cause__) == f"cause of item {exc.index}"
            assert exc.__context__ is None and exc.__suppress_context__
        if len(failing) == 1:
            assert isinstance(exc, Interrupt)
        assert not isinstance(exc, Exception)
        assert not isinstance(exc, trioflow.BatchError)
        interrupts, rest = exc.split(Interrupt) if isinstance(exc, BaseExceptionGroup) else (exc, None)
        assert interrupts is not None and rest is None
        assert probe.attempts and set(probe.attempts.values()) == {1}
        assert probe.fallbacks == []
        assert probe.finalized == set(probe.attempts)

    @given(
        api=st.sampled_from(NODE_APIS),
        durations=sts.duration_lists(min_size=1),
        cap=sts.caps,
        wait=st.sampled_from([0.5, 2.0]),
        cancel_at=cancel_instants,
    )
    def test_outer_cancel_during_retries_neither_retries_nor_falls_back(
        self, api: str, durations: list[float], cap: int | None, wait: float, cancel_at: float
    ) -> None:
        """Items whose first attempt failed, cancelled from outside during an attempt or a retry wait,
        get no attempt beyond their second and never reach exec_fallback; no task is left."""
        probe = Probe(durations, failed_attempts=[1] * len(durations))
        counter = TaskCounter()

        async def main() -> tuple[bool, int, int]:
            baseline = len(counter.live)
            with trio.move_on_after(cancel_at) as scope:
                await run_batch(api, probe, max_retries=3, wait=wait, max_concurrency=cap)
            return scope.cancelled_caught, baseline, len(counter.live)

        cancelled, baseline, live = run_in_mock_time(main, counter)
        assert live == baseline
        assert set(probe.attempts.values()) <= {1, 2}
        assert probe.fallbacks == []
        assert cancelled or probe.posts == 1


# ---------------------------------------------------------------------------
# as_completed: leaving early, failing while the consumer is busy
# ---------------------------------------------------------------------------


class TestAsCompleted:
    @racy
    @given(data=st.data(), durations=sts.duration_lists(min_size=1), cap=sts.caps, kind=sync_kinds)
    def test_as_completed_leaving_early_cancels_the_rest(
        self, data: st.DataObject, durations: list[float], cap: int | None, kind: str
    ) -> None:
        """Breaking out of as_completed cancels the items still running, raises nothing and leaves no task."""
        stop_after = data.draw(st.integers(1, len(durations)), label="stop_after")
        probe = Probe(durations)
        counter = TaskCounter()

        async def main() -> tuple[int, int, dict[int, float]]:
            baseline = len(counter.live)
            async with trioflow.as_completed(probe.work, probe.items(kind), max_concurrency=cap) as results:
                async for index, value in results:
                    probe.received[index] = value
                    if len(probe.received) == stop_after:
                        break
            live = len(counter.live)
            finished = dict(probe.finished)
            await trio.sleep(100)  # nothing is left to finish later
            assert probe.finished == finished
            return baseline, live, finished

        baseline, live, finished = run_in_mock_time(main, counter)
        assert live == baseline
        assert len(probe.received) == stop_after
        assert probe.received.keys() <= finished.keys()
        assert probe.finalized == set(probe.attempts)

    @racy
    @given(
        data=st.data(),
        durations=sts.duration_lists(min_size=1),
        cap=sts.caps,
        consume_delay=st.sampled_from([0.0, 0.25, 1.0]),
    )
    def test_as_completed_lets_a_BaseException_through(
        self, data: st.DataObject, durations: list[float], cap: int | None, consume_delay: float
    ) -> None:
        """A KeyboardInterrupt-like BaseException from an item leaves the as_completed block, whatever the
        consumer is doing at that instant (never swallowed by the cancel that ends the block)."""
        failing = data.draw(sts.failure_positions(len(durations)))
        probe = Probe(durations, failing=failing, fail_with=Interrupt, consume_delay=consume_delay)

        async def main() -> BaseException | None:
            try:
                await run_batch("as_completed", probe, max_concurrency=cap)
            except BaseException as exc:
                return exc
            return None

        exc = run_in_mock_time(main)
        if isinstance(exc, BaseExceptionGroup):  # several items raised at one instant: they stay a group
            interrupts, rest = exc.split(Interrupt)
            assert interrupts is not None and rest is None
            assert len(leaves(exc)) >= 2
        else:  # a lone one comes out bare (DESIGN: never wrapped)
            assert isinstance(exc, Interrupt)

    @pytest.mark.parametrize(
        ("durations", "failing", "busy"),
        [([0.0, 0.5], 1, 0.5), ([0.0, 0.0, 0.0, 0.25], 0, 0.0)],
        ids=["busy-until-the-failure", "failure-among-ties"],
    )
    def test_as_completed_lets_a_BaseException_through_a_busy_consumer(
        self, durations: list[float], failing: int, busy: float
    ) -> None:
        """An item's KeyboardInterrupt-like BaseException while the consumer is busy is not swallowed when
        the block ends (regressions: a cancel replaced it at an ``aclose`` checkpoint in the feeding task).
        Which task Trio runs first at one instant is random, so each scenario runs 32 times."""

        async def main() -> None:
            probe = Probe(durations, failing=frozenset({failing}), fail_with=Interrupt)
            async with trioflow.as_completed(probe.work, range(len(durations))) as results:
                async for _ in results:
                    await trio.sleep(busy)

        for _ in range(32):
            with pytest.raises(Interrupt):  # bare, not wrapped in a group
                run_in_mock_time(main)

    async def test_as_completed_failure_keeps_undelivered_results_in_completed(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Results that finished while the consumer was busy, and were not handed out when another item
        failed, are in BatchError.completed; the loop then ends and the error comes at the block's exit."""
        probe = Probe([0.0, 0.0, 0.5], failing=frozenset({2}))
        with pytest.raises(trioflow.BatchError) as info:
            async with trioflow.as_completed(probe.work, range(3)) as results:
                await trio.sleep(1)  # busy while items 0 and 1 finish and item 2 fails
                async for index, value in results:
                    probe.received[index] = value
                probe.loop_ended = True
        assert probe.loop_ended
        assert probe.received == {}
        assert info.value.completed == {0: "r0", 1: "r1"}
        assert [item_index_of(exc) for exc in info.value.exceptions] == [2]


# ---------------------------------------------------------------------------
# ParallelBatchFlow: copies and params per run
# ---------------------------------------------------------------------------


@attrs.define(slots=False, eq=False, kw_only=True)
class RememberParams(trioflow.Node):
    """Reads its params before and after awaits; counts the sub-flows in progress."""

    durations: list[float]
    meter: Meter
    seen: dict[int, tuple[int, int, str, trioflow.Node]]

    async def prep(self, shared: dict[str, Any]) -> int:
        self.meter.inside += 1
        self.meter.peak = max(self.meter.peak, self.meter.inside)
        key: int = self.params["key"]
        await trio.sleep(self.durations[key])
        return key

    async def exec(self, prep_res: int) -> tuple[int, int, str, trioflow.Node]:
        await trio.sleep(self.durations[prep_res] / 2)
        return prep_res, self.params["key"], self.params["base"], self

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: tuple[int, int, str, trioflow.Node]) -> None:
        self.seen[prep_res] = exec_res


@attrs.define(slots=False, eq=False, kw_only=True)
class WriteResult(trioflow.Node):
    """The sub-flow's last node: writes its run's result to shared by its params."""

    meter: Meter

    async def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        await trio.lowlevel.checkpoint()
        shared.setdefault("out", {})[self.params["key"]] = f"{self.params['base']}{self.params['key']}"
        self.meter.inside -= 1


class TestParallelBatchFlow:
    @given(durations=sts.duration_lists(), cap=sts.caps, kind=sts.input_kinds)
    def test_ParallelBatchFlow_gives_each_run_its_own_copies_and_params(
        self, durations: list[float], cap: int | None, kind: str
    ) -> None:
        """Concurrent sub-flow runs each see their own params after awaits, run their own node copies,
        all write their results, and no more than max_concurrency run at once."""
        meter = Meter()
        seen: dict[int, tuple[int, int, str, trioflow.Node]] = {}
        remember = RememberParams(durations=durations, meter=meter, seen=seen)
        write = WriteResult(meter=meter)
        remember >> write

        class Grid(trioflow.ParallelBatchFlow):
            def prep(self, shared: dict[str, Any]) -> Any:
                if kind == "list":
                    return [{"key": k} for k in range(len(durations))]
                if kind == "generator":
                    return ({"key": k} for k in range(len(durations)))
                return self.aprep()

            async def aprep(self) -> AsyncIterator[dict[str, int]]:
                for k in range(len(durations)):
                    await trio.lowlevel.checkpoint()
                    yield {"key": k}

        flow = Grid(start=remember, max_concurrency=cap, params={"base": "b"})
        shared: dict[str, Any] = {}
        run_in_mock_time(lambda: flow.run(shared))
        keys = list(range(len(durations)))
        assert shared.get("out", {}) == {k: f"b{k}" for k in keys}
        assert sorted(seen) == keys
        assert all(seen[k][:3] == (k, k, "b") for k in keys)
        ids = {id(seen[k][3]) for k in keys}  # the copies are kept alive by `seen`, so ids are not reused
        assert len(ids) == len(keys) and id(remember) not in ids
        assert remember.params == {} and write.params == {}
        assert meter.inside == 0
        assert meter.peak <= (cap or len(durations))


# ---------------------------------------------------------------------------
# Bad input: clear errors that name the node (or the function)
# ---------------------------------------------------------------------------

BAD_OPTIONS = [
    ("max_concurrency", 0, ValueError),
    ("max_concurrency", -1, ValueError),
    ("max_concurrency", 1.5, ValueError),
    ("max_concurrency", True, ValueError),
    ("max_concurrency", "4", ValueError),
    ("limiter", 4, TypeError),
    ("limiter", trio.Semaphore(4), TypeError),
    ("max_per_second", 0, ValueError),
    ("max_per_second", -1.0, ValueError),
    ("max_per_second", math.inf, ValueError),
    ("max_per_second", math.nan, ValueError),
    ("max_per_second", "10", ValueError),
]


async def _double(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return 2 * x


class TestBadInput:
    @pytest.mark.parametrize("cls", [ProbeNode, ProbeFlow])
    async def test_non_iterable_prep_is_a_TypeError_naming_the_node(self, cls: type[trioflow.Node]) -> None:
        """A parallel batch whose prep returns a non-iterable fails with a TypeError naming the node."""

        class NotIterable(cls):  # type: ignore[valid-type,misc]
            def prep(self, shared: Any) -> int:
                return 42

        start = {"start": ProbeStep(probe=Probe([]))} if cls is ProbeFlow else {}
        node = NotIterable(probe=Probe([]), **start)
        with pytest.raises(TypeError, match=r"NotIterable\.prep returned int 42.*not iterable"):
            await node.run({})

    async def test_parallel_map_and_as_completed_reject_non_iterable_items(self) -> None:
        """parallel_map and as_completed name themselves when items is not iterable."""
        with pytest.raises(TypeError, match=r"parallel_map: items must be an iterable.*not int"):
            await trioflow.parallel_map(_double, 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"as_completed: items must be an iterable.*not int"):
            async with trioflow.as_completed(_double, 42):  # type: ignore[arg-type]
                pass  # pragma: no cover

    @pytest.mark.parametrize(("option", "value", "error"), BAD_OPTIONS)
    @pytest.mark.parametrize("cls", [trioflow.ParallelBatchNode, trioflow.ParallelBatchFlow])
    def test_bad_option_is_rejected_at_construction_naming_the_node(
        self, cls: type[trioflow.Node], option: str, value: Any, error: type[Exception]
    ) -> None:
        """A bad max_concurrency, limiter or max_per_second is an error naming the node class and the option."""

        class Translate(cls):  # type: ignore[valid-type,misc]
            pass

        with pytest.raises(error, match=rf"^Translate.*{option}"):
            Translate(**{option: value})

    @pytest.mark.parametrize("cls", [trioflow.ParallelBatchNode, trioflow.ParallelBatchFlow])
    def test_bad_on_error_is_rejected_naming_the_node(self, cls: type[trioflow.Node]) -> None:
        """on_error other than "raise" or "collect" is a ValueError naming the node class."""

        class Translate(cls):  # type: ignore[valid-type,misc]
            pass

        with pytest.raises(ValueError, match=r"^Translate\.on_error must be 'raise' or 'collect', not 'ignore'"):
            Translate(on_error="ignore")

    @pytest.mark.parametrize(("option", "value", "error"), [*BAD_OPTIONS, ("on_error", "ignore", ValueError)])
    async def test_bad_option_set_after_init_is_rejected_at_run(
        self, option: str, value: Any, error: type[Exception]
    ) -> None:
        """A plain subclass that sets a bad option in its own __init__ gets the named error when it runs."""

        class Translate(trioflow.ParallelBatchNode):
            def __init__(self) -> None:
                super().__init__()
                setattr(self, option, value)

            def prep(self, shared: Any) -> list[int]:
                return [1, 2]

        node = Translate()
        with pytest.raises(error, match=rf"^Translate.*{option}"):
            await node.run({})

    @pytest.mark.parametrize(("option", "value", "error"), BAD_OPTIONS)
    async def test_bad_option_is_rejected_by_parallel_map_and_as_completed(
        self, option: str, value: Any, error: type[Exception]
    ) -> None:
        """parallel_map and as_completed name themselves and the option in the error."""
        with pytest.raises(error, match=rf"^parallel_map: {option}"):
            await trioflow.parallel_map(_double, [1], **{option: value})
        with pytest.raises(error, match=rf"^as_completed: {option}"):
            async with trioflow.as_completed(_double, [1], **{option: value}):
                pass  # pragma: no cover


# ---------------------------------------------------------------------------
# A lone BaseException comes out bare; only async generators are closed
# ---------------------------------------------------------------------------


class TestBareBaseException:
    @pytest.mark.parametrize("api", ["parallel_map", *NODE_APIS])
    @pytest.mark.parametrize("cap", [None, 1, 3])
    def test_lone_BaseException_propagates_bare(self, api: str, cap: int | None) -> None:
        """One item's KeyboardInterrupt-like BaseException leaves the batch as itself, not wrapped
        in Trio's BaseExceptionGroup, and no task is left behind."""
        probe = Probe([1.0, 0.5, 2.0, 1.0], failing=frozenset({1}), fail_with=Interrupt)
        counter = TaskCounter()

        async def main() -> tuple[int, int]:
            baseline = len(counter.live)
            with pytest.raises(Interrupt):
                await run_batch(api, probe, max_concurrency=cap)
            return baseline, len(counter.live)

        baseline, live = run_in_mock_time(main, counter)
        assert live == baseline

    def test_several_BaseExceptions_at_once_stay_a_group(self) -> None:
        """Two items raising BaseExceptions in the same scheduling round (neither reaches a checkpoint
        where the first one's cancel could stop it) are not reduced to one of them."""

        async def interrupt_at_once(i: int) -> None:
            raise Interrupt(i)

        async def main() -> None:
            with pytest.RaisesGroup(Interrupt, Interrupt):
                await trioflow.parallel_map(interrupt_at_once, [0, 1], max_concurrency=2)

        run_in_mock_time(main)

    async def test_parallel_map_leaves_a_callers_channel_open(self, autojump_clock: trio.testing.MockClock) -> None:
        """An async iterable that is not an async generator (a channel the caller owns) is not closed
        when the batch stops early; only async generators are."""
        send, receive = trio.open_memory_channel[int](10)
        for i in range(5):
            send.send_nowait(i)

        async def fail_on_two(i: int) -> int:
            if i == 2:
                raise Boom(i)
            return i

        with pytest.raises(trioflow.BatchError):
            await trioflow.parallel_map(fail_on_two, receive, max_concurrency=1)
        assert await receive.receive() == 3  # still open, and the rest is still there
