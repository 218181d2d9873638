"""Fake nodes shared by the test modules (fakes, not mocks: they do the planned work on Trio's clock)."""

from __future__ import annotations

import math
from typing import Any

import trio

import trioflow
from trioflow import _instrument


class Planned(trioflow.ParallelBatchNode):
    """Item ``i`` sleeps ``plans[i][0]`` seconds and fails its first ``plans[i][1]`` attempts."""

    def prep(self, shared: dict[str, Any]) -> list[tuple[int, tuple[int, int]]]:
        return list(enumerate(shared["plans"]))

    async def exec(self, item: tuple[int, tuple[int, int]]) -> int:
        index, (duration, failures) = item
        await trio.sleep(duration)
        if self.cur_retry < failures:
            raise ValueError(index)
        return index

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> str:
        shared["results"] = exec_res
        return "done"


# -- instruments (tests/test_tracing.py, tests/test_progress.py) --------------------------------


class Busy(Exception):
    """The provider's "slow down" (an HTTP 429) in the throttle fakes."""


class CoolingThrottle:
    """A fake of the Throttle protocol the retry core calls: a :class:`Busy` attempt is throttled,
    starts a shared cool-down of ``cool_down`` s (no attempt is admitted before it ends) and halves
    the rate, which it reports to the attached instruments as a real adaptive Throttle does."""

    def __init__(self, cool_down: float = 2.0, rate: float = 40.0) -> None:
        self.cool_down = cool_down
        self.rate = rate
        self.until = -math.inf

    async def acquire(self, cost: float) -> object:
        if self.until > trio.current_time():
            await trio.sleep_until(self.until)
        else:
            await trio.lowlevel.checkpoint()
        return object()

    def release(self, ticket: object, outcome: str, error: BaseException | None) -> float | None:
        if outcome != "throttled":
            return None
        self.until = trio.current_time() + self.cool_down
        self.rate /= 2
        attached = _instrument.current()
        if attached is not None:
            attached.emit("rate_changed", self, self.rate)
        return self.cool_down

    def is_throttle(self, exc: BaseException) -> bool:
        return isinstance(exc, Busy)


class Throttled(trioflow.ParallelBatchNode):
    """Item ``i`` sleeps ``plans[i][0]`` seconds and is throttled (raises Busy) on its first
    ``plans[i][1]`` tries; throttled tries do not count as attempts, so ``cur_retry`` stays 0."""

    def prep(self, shared: dict[str, Any]) -> list[tuple[int, tuple[int, int]]]:
        self.params.setdefault("tries", {})
        return list(enumerate(shared["plans"]))

    async def exec(self, item: tuple[int, tuple[int, int]]) -> int:
        index, (duration, throttles) = item
        await trio.sleep(duration)
        tries = self.params["tries"]
        tries[index] = tries.get(index, 0) + 1
        if tries[index] <= throttles:
            raise Busy(index)
        return index
