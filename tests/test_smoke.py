"""A first end-to-end run of each node kind."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import trio

import trioflow


class Translate(trioflow.ParallelBatchNode):
    def prep(self, shared: dict[str, Any]) -> Any:
        return ((shared["text"], lang) for lang in shared["languages"])

    async def exec(self, item: tuple[str, str]) -> str:
        text, lang = item
        await trio.sleep(len(lang))
        return f"{text}:{lang}"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> str:
        shared["translations"] = exec_res
        return "done"


async def test_ParallelBatchNode_in_Flow_keeps_input_order(autojump_clock: trio.testing.MockClock) -> None:
    """Items that finish in reverse order still reach post in input order."""
    shared: dict[str, Any] = {"text": "hi", "languages": ["french", "de", "ita"]}
    action = await trioflow.Flow(start=Translate(max_concurrency=2)).run(shared)
    assert action == "done"
    assert shared["translations"] == ["hi:french", "hi:de", "hi:ita"]


def test_version_is_the_installed_packages() -> None:
    """trioflow.__version__ is the version the installed package's metadata gives."""
    assert trioflow.__version__ == importlib.metadata.version("trioflow")
