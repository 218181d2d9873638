"""Scenario ``api``: a batch against a throttling API whose limits the client does not know.

``python -m benchmarks.api`` (``--smoke``, ``--quick``, ``--plot rate.png``) runs it alone.

The provider is simulated under ``trio.testing.MockClock`` (virtual time, so
a minute of API traffic costs a fraction of a second, and a seed gives the
same figures again, up to Trio's randomised task order: microseconds): a
token bucket of 50 requests per second with a burst of 10, which the client
is not told.  A call is decided when it arrives: accepted, it
answers after a lognormal latency (median 1 s); rejected, it answers after
about 50 ms with a 429 whose ``retry-after-ms`` header says when the next
token comes.  Four cases: the rate steady, or dropping to 20 requests per
second at t = 20 s; rejections free, or costing a token (OpenAI:
"unsuccessful requests contribute to your per-minute limit"), so a client
that retries too eagerly digs itself deeper.

Systems, each running N calls (3,000 in the full run) per case and seed:

- ``trioflow``: ``ParallelBatchNode`` with ``Throttle(adaptive=True)`` (cap 200);
- ``cap-25``, ``cap-50``: ``ParallelBatchNode(max_concurrency=25 or 50)``
  with the node's retries, which honour each 429's Retry-After for that item;
- ``pocketflow``: PocketFlow's ``AsyncParallelBatchNode`` with its retries
  (``max_retries=20, wait=1``; it cannot read a Retry-After) and the usual
  ``asyncio.Semaphore(50)`` inside ``exec_async``, run on trio-asyncio so it
  shares the virtual clock;
- ``aiometer``: ``aiometer.amap(max_per_second=50)``, told the true rate,
  each call sleeping Retry-After and calling again on a 429 (the SDK habit);
- ``anyio``: a hand-written anyio pool of 50 workers with the same SDK habit.

Reported per case and system: time / ideal (the ideal: the time the
provider could admit the last call, plus the median latency) and the share of
attempts the provider throttled.  A run that makes more than 20 attempts per
call or runs past 10x the ideal is stopped and reported as such.  Targets
(the performance contract in README.md): ``trioflow`` within 1.2x of the ideal
with at most 6 % of attempts throttled in all four cases, and every fixed cap
failing at least one case.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

import trioflow

#: The provider's hidden token bucket.
RATE = 50.0
BURST = 10.0
#: The dropping case: the rate falls to this at DROP_AT seconds.
DROPPED_RATE = 20.0
DROP_AT = 20.0
#: Latency of an accepted call: lognormal, median 1 s.
MEDIAN_LATENCY = 1.0
LATENCY_SIGMA = 0.5
#: Latency of a rejected call (the 429 comes back fast): lognormal, median 50 ms.
REJECT_LATENCY = 0.05
#: Rejections costing a token: the bucket goes down to at most this many seconds of tokens below zero.
DEBT_LIMIT = 60.0
#: A run is stopped past this many attempts per call or this multiple of the ideal time.
MAX_ATTEMPTS_PER_CALL = 20
MAX_TIME_FACTOR = 10.0
#: The cap of the adaptive system: room for 4x the provider rate x the median latency.
TRIOFLOW_CAP = 200

#: Calls per run and seeds in the full run.
N = 3000
SEEDS = 3

SYSTEMS = ("trioflow", "cap-25", "cap-50", "pocketflow", "aiometer", "anyio")
LABELS = {
    "trioflow": "trioflow ParallelBatchNode, Throttle(adaptive=True), cap 200",
    "cap-25": "trioflow ParallelBatchNode(max_concurrency=25), the node's retries (Retry-After per item)",
    "cap-50": "trioflow ParallelBatchNode(max_concurrency=50), the node's retries (Retry-After per item)",
    "pocketflow": "PocketFlow AsyncParallelBatchNode(max_retries=20, wait=1) + asyncio.Semaphore(50)",
    "aiometer": "aiometer.amap(max_per_second=50), sleeps Retry-After inside the call",
    "anyio": "hand-written anyio pool of 50, sleeps Retry-After inside the call",
}
CASES = ("steady free", "steady costing", "dropping free", "dropping costing")
#: What the contract asks of trioflow in every case.
TARGET_TIME = 1.2
TARGET_THROTTLED = 0.06


class RateLimited(Exception):
    """A 429 as an HTTP client raises it: ``exc.response.status_code`` and ``.headers`` (httpx's shape)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests (retry after {retry_after:.3f} s)")
        self.response = _Response(429, {"retry-after-ms": str(math.ceil(retry_after * 1000))})


@dataclass
class _Response:
    status_code: int
    headers: dict[str, str]


@dataclass
class Provider:
    """The simulated API: a token bucket with a rate schedule, the client unaware of it.

    ``schedule`` is ``((t0, rate0), (t1, rate1), ...)`` with ``t0 == 0``: the
    refill rate from each time on.  ``costing``: a rejected call takes a token
    too (the bucket goes below zero, down to a minute's tokens, and the next
    Retry-After grows).
    """

    schedule: tuple[tuple[float, float], ...]
    burst: float = BURST
    costing: bool = False
    seed: int = 0
    level: float = field(init=False)
    updated: float = field(default=0.0, init=False)
    attempts: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)
    done: int = field(default=0, init=False)
    stop: Callable[[], None] | None = field(default=None, init=False)
    budget: int = field(default=0, init=False)
    _tries: dict[int, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.level = self.burst

    @classmethod
    def for_case(cls, case: str, seed: int) -> Provider:
        shape, cost = case.split()
        schedule = ((0.0, RATE),) if shape == "steady" else ((0.0, RATE), (DROP_AT, DROPPED_RATE))
        return cls(schedule, costing=cost == "costing", seed=seed)

    def rate_at(self, t: float) -> float:
        """The refill rate at time ``t``."""
        rate = self.schedule[0][1]
        for start, r in self.schedule:
            if t >= start:
                rate = r
        return rate

    def _refill(self, now: float) -> None:
        t = self.updated
        for i, (start, rate) in enumerate(self.schedule):
            end = self.schedule[i + 1][0] if i + 1 < len(self.schedule) else math.inf
            lo, hi = max(t, start), min(now, end)
            if hi > lo:
                self.level = min(self.burst, self.level + (hi - lo) * rate)
        self.updated = now

    def arrive(self, item: int, now: float) -> tuple[float, float | None]:
        """A call of ``item`` arrives at ``now``: (its latency, None) if accepted, else
        (the 429's latency, its Retry-After in seconds)."""
        self.attempts += 1
        if self.stop is not None and self.attempts > self.budget:
            self.stop()
        tries = self._tries.get(item, 0)
        self._tries[item] = tries + 1
        rng = random.Random(self.seed * 1_000_003 + item * 1009 + tries)
        self._refill(now)
        if self.level >= 1.0:
            self.level -= 1.0
            return rng.lognormvariate(math.log(MEDIAN_LATENCY), LATENCY_SIGMA), None
        self.rejected += 1
        if self.costing:  # a debt of at most a minute's tokens, as a per-minute count would hold
            self.level = max(self.level - 1.0, -DEBT_LIMIT * self.rate_at(now))
        retry_after = (1.0 - self.level) / self.rate_at(now)
        return rng.lognormvariate(math.log(REJECT_LATENCY), LATENCY_SIGMA), retry_after

    def ideal(self, n: int) -> float:
        """The time the provider could admit the ``n``-th call at best, plus the median latency."""
        t, tokens = 0.0, self.burst
        for i, (start, rate) in enumerate(self.schedule):
            end = self.schedule[i + 1][0] if i + 1 < len(self.schedule) else math.inf
            t = max(t, start)
            if tokens + (end - t) * rate >= n:
                return t + max(0.0, n - tokens) / rate + MEDIAN_LATENCY
            tokens += (end - t) * rate
            t = end
        raise AssertionError("unreachable: the last rate lasts forever")

    async def call(self, item: int, sleep: Callable[[float], Awaitable[Any]]) -> int:
        """One API call of ``item``, sleeping with ``sleep`` (each system's own)."""
        latency, retry_after = self.arrive(item, trio.current_time())
        await sleep(latency)
        if retry_after is not None:
            raise RateLimited(retry_after)
        self.done += 1
        return item


@dataclass
class Outcome:
    """One run of one system in one case and seed."""

    system: str
    case: str
    seed: int
    n: int
    seconds: float  # virtual, until the last result (inf: did not finish)
    ideal: float
    attempts: int
    throttled: int
    done: int
    finished: bool
    error: str = ""
    stopped_at: float = 0.0  # virtual seconds when the run ended, finished or not
    rates: list[tuple[float, float]] = field(default_factory=list)  # trioflow's rate over time

    @property
    def ratio(self) -> float:
        return self.seconds / self.ideal

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.attempts if self.attempts else 0.0


# -- the systems ------------------------------------------------------------------


class _Call(trioflow.ParallelBatchNode):
    """One API call per item."""

    def prep(self, shared: dict[str, Any]) -> range:
        return range(shared["n"])

    async def exec(self, item: int) -> int:
        provider: Provider = self.params["provider"]
        return await provider.call(item, trio.sleep)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["results"] = exec_res


class _RateLog(trioflow.Instrument):
    def __init__(self) -> None:
        self.rates: list[tuple[float, float]] = []

    def rate_changed(self, throttle: Any, rate: float) -> None:
        self.rates.append((trio.current_time(), rate))


async def _run_trioflow(provider: Provider, n: int, outcome: Outcome) -> list[int]:
    throttle = trioflow.Throttle(adaptive=True)
    node = _Call(max_concurrency=TRIOFLOW_CAP, throttle=throttle)
    node.set_params({"provider": provider})
    log = _RateLog()
    log.rates.append((0.0, throttle.statistics().rate or 0.0))
    shared: dict[str, Any] = {"n": n}
    try:
        with trioflow.instrumented(log):
            await node.run(shared)
    finally:
        outcome.rates = log.rates
    return shared["results"]  # type: ignore[no-any-return]


async def _run_cap(provider: Provider, n: int, cap: int) -> list[int]:
    node = _Call(max_concurrency=cap, max_retries=MAX_ATTEMPTS_PER_CALL + 1)
    node.set_params({"provider": provider})
    shared: dict[str, Any] = {"n": n}
    await node.run(shared)
    return shared["results"]  # type: ignore[no-any-return]


async def _run_pocketflow(provider: Provider, n: int) -> list[int]:
    import asyncio

    import pocketflow
    import trio_asyncio

    class Call(pocketflow.AsyncParallelBatchNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[str, Any]) -> list[int]:
            return list(range(shared["n"]))

        async def exec_async(self, item: int) -> int:
            async with shared["sem"]:
                return await provider.call(item, asyncio.sleep)

        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
            shared["results"] = exec_res

    async def main() -> None:
        shared["sem"] = asyncio.Semaphore(50)
        await Call(max_retries=20, wait=1).run_async(shared)

    shared: dict[str, Any] = {"n": n}
    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(main)()
    return shared["results"]  # type: ignore[no-any-return]


async def _sdk_call(provider: Provider, item: int, sleep: Callable[[float], Awaitable[Any]]) -> int:
    """The SDK habit: on a 429, sleep its Retry-After inside the call, then call again."""
    while True:
        try:
            return await provider.call(item, sleep)
        except RateLimited as exc:
            await sleep(float(exc.response.headers["retry-after-ms"]) / 1000)


async def _run_aiometer(provider: Provider, n: int) -> list[int]:
    import aiometer
    import anyio

    async def one(item: int) -> int:
        return await _sdk_call(provider, item, anyio.sleep)

    results = [0] * n
    async with aiometer.amap(one, range(n), max_per_second=RATE) as done:
        async for value in done:
            results[value] = value
    return results


async def _run_anyio(provider: Provider, n: int, cap: int = 50) -> list[int]:
    import anyio

    results = [0] * n
    items = iter(range(n))

    async def worker() -> None:
        for item in items:
            results[item] = await _sdk_call(provider, item, anyio.sleep)

    async with anyio.create_task_group() as tg:
        for _ in range(cap):
            tg.start_soon(worker)
    return results


def run_once(system: str, case: str, seed: int, n: int) -> Outcome:
    """Run ``system`` over ``n`` calls in ``case`` with ``seed``, in virtual time."""
    random.seed(seed)  # the Throttle's cool-down jitter
    provider = Provider.for_case(case, seed)
    ideal = provider.ideal(n)
    outcome = Outcome(system, case, seed, n, math.inf, ideal, 0, 0, 0, False)

    async def main() -> None:
        try:
            await bounded()
        finally:
            outcome.stopped_at = trio.current_time()

    async def bounded() -> None:
        with trio.move_on_after(MAX_TIME_FACTOR * ideal) as scope:
            provider.stop = scope.cancel
            provider.budget = MAX_ATTEMPTS_PER_CALL * n
            if system == "trioflow":
                results = await _run_trioflow(provider, n, outcome)
            elif system.startswith("cap-"):
                results = await _run_cap(provider, n, int(system[4:]))
            elif system == "pocketflow":
                results = await _run_pocketflow(provider, n)
            elif system == "aiometer":
                results = await _run_aiometer(provider, n)
            elif system == "anyio":
                results = await _run_anyio(provider, n)
            else:
                raise ValueError(f"unknown system {system!r}")
            assert results == list(range(n)), f"{system} returned wrong results"
            outcome.finished = True
            outcome.seconds = trio.current_time()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except Exception as exc:  # a system that gives up (retries used up) is a result, not a crash
        outcome.error = _short(exc)
    outcome.attempts, outcome.throttled, outcome.done = provider.attempts, provider.rejected, provider.done
    if not outcome.finished and not outcome.error:
        outcome.error = "stopped: " + (
            f"over {MAX_ATTEMPTS_PER_CALL} attempts per call"
            if provider.attempts > provider.budget
            else f"past {MAX_TIME_FACTOR:g}x the ideal"
        )
    return outcome


def _short(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:80]


# -- the report ---------------------------------------------------------------------


def summarize(outcomes: Sequence[Outcome]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (case, system): the median time / ideal and throttled share over seeds, and failures."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for case in CASES:
        for system in SYSTEMS:
            runs = [o for o in outcomes if o.case == case and o.system == system]
            if not runs:
                continue
            finished = [o for o in runs if o.finished]
            table[case, system] = {
                "ratio": statistics.median(o.ratio for o in runs) if len(finished) == len(runs) else math.inf,
                "worst": max(o.ratio for o in runs),
                "throttled": statistics.median(o.throttled_share for o in runs),
                "worst_throttled": max(o.throttled_share for o in runs),
                "failed": [o.error for o in runs if not o.finished],
                "done": min(o.done for o in runs),
                "n": runs[0].n,
            }
    return table


def passes(entry: dict[str, Any]) -> bool:
    """Whether a (case, system) entry meets the contract's bar (worst seed)."""
    return not entry["failed"] and entry["worst"] <= TARGET_TIME and entry["worst_throttled"] <= TARGET_THROTTLED


def format_tables(outcomes: Sequence[Outcome]) -> str:
    table = summarize(outcomes)
    systems = [s for s in SYSTEMS if any(key[1] == s for key in table)]
    lines = []
    width = 18
    header = "case".ljust(18) + "".join(s.rjust(width) for s in systems)
    lines.append("time / ideal (median over seeds; worst in brackets), then % attempts throttled")
    lines.append(header)
    for case in CASES:
        row = case.ljust(18)
        row2 = "".ljust(18)
        for system in systems:
            entry = table.get((case, system))
            if entry is None:
                row += "-".rjust(width)
                row2 += "".rjust(width)
                continue
            if entry["failed"]:
                cell = f"fails ({entry['done']}/{entry['n']})"
            else:
                cell = f"{entry['ratio']:.2f}x [{entry['worst']:.2f}]"
            row += cell.rjust(width)
            row2 += f"{100 * entry['throttled']:.1f}% [{100 * entry['worst_throttled']:.1f}]".rjust(width)
        lines.append(row)
        lines.append(row2)
    lines.append("")
    for system in systems:
        failing = [case for case in CASES if (case, system) in table and not passes(table[case, system])]
        verdict = "meets 1.2x / 6 % in every case" if not failing else "misses 1.2x / 6 % in: " + ", ".join(failing)
        lines.append(f"{system:>10}: {verdict}")
        for case in failing:
            for error in dict.fromkeys(table[case, system]["failed"]):
                lines.append(f"{'':>12}{case}: {error}")
    return "\n".join(lines)


def plot(outcomes: Sequence[Outcome], path: str) -> None:
    """Rate over time, provider limit vs trioflow's adaptive rate, one panel per case (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in CASES if any(o.case == c and o.system == "trioflow" for o in outcomes)]
    fig, axes = plt.subplots(len(cases), 1, figsize=(9, 2.6 * len(cases)), squeeze=False)
    for ax, case in zip(axes[:, 0], cases, strict=True):
        ours = min((o for o in outcomes if o.case == case and o.system == "trioflow"), key=lambda o: o.seed)
        provider = Provider.for_case(case, ours.seed)
        end = ours.seconds if math.isfinite(ours.seconds) else ours.ideal
        xs = [t for t, _ in ours.rates] + [end]
        ys = [r for _, r in ours.rates] + [ours.rates[-1][1]]
        ax.step(xs, ys, where="post", label="trioflow Throttle rate")
        limit_x = [0.0] + [t for t, _ in provider.schedule[1:] for _ in (0, 1)] + [end]
        limit_y = [provider.schedule[0][1]]
        for _, r in provider.schedule[1:]:
            limit_y += [limit_y[-1], r]
        limit_y.append(limit_y[-1])
        ax.plot(limit_x, limit_y, "k--", label="provider limit")
        ax.set_title(f"{case}: {ours.ratio:.2f}x ideal, {100 * ours.throttled_share:.1f} % throttled", fontsize=10)
        ax.set_ylabel("requests / s")
        ax.set_ylim(0, max(ys + limit_y) * 1.1)
    axes[-1, 0].set_xlabel("virtual seconds")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rate_trace(case: str, seed: int, n: int) -> dict[str, list[tuple[float | str, float]]]:
    """trioflow's adaptive rate and the provider's limit over time in one run, as step lines."""
    ours = run_once("trioflow", case, seed, n)
    end = ours.stopped_at
    provider = Provider.for_case(case, seed)

    def steps(changes: Sequence[tuple[float, float]]) -> list[tuple[float | str, float]]:
        # the changes up to the run's end only (a short run ends before the provider's drop)
        changes = [change for i, change in enumerate(changes) if i == 0 or change[0] <= end]
        points: list[tuple[float | str, float]] = []
        for i, (t, rate) in enumerate(changes):
            if i:
                points.append((t, changes[i - 1][1]))
            points.append((t, rate))
        points.append((end, changes[-1][1]))
        return points

    return {"trioflow": steps(ours.rates), "provider limit": steps(list(provider.schedule))}


def run_all(
    n: int, seeds: Sequence[int], systems: Sequence[str] = SYSTEMS, cases: Sequence[str] = CASES
) -> list[Outcome]:
    """Every system in every case and seed."""
    return [run_once(system, case, seed, n) for case in cases for system in systems for seed in seeds]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny: 30 calls, one seed (seconds)")
    size.add_argument("--quick", action="store_true", help="1,000 calls, one seed")
    parser.add_argument("--n", type=int, help="calls per run (default 3,000)")
    parser.add_argument("--seeds", type=int, help="seeds (default 3)")
    parser.add_argument("--system", action="append", choices=SYSTEMS, help="run only these systems")
    parser.add_argument("--plot", help="write the rate-over-time PNG here")
    args = parser.parse_args(argv)
    n = args.n or (30 if args.smoke else 1000 if args.quick else N)
    seeds = range(args.seeds or (1 if args.smoke or args.quick else SEEDS))
    outcomes = run_all(n, seeds, args.system or SYSTEMS)
    print(f"api: {n:,} calls, seeds {list(seeds)}, provider {RATE:g}/s burst {BURST:g} (drop to {DROPPED_RATE:g}/s "
          f"at t={DROP_AT:g}s), virtual time")
    print(format_tables(outcomes))
    if args.plot:
        plot(outcomes, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
