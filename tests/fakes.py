"""Fake nodes shared by the test modules (fakes, not mocks: they do the planned work on Trio's clock)."""

from __future__ import annotations

from typing import Any

import trio

import trioflow


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
