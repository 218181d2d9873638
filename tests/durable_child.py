"""A durable run in a process of its own, for the kill-and-resume tests (tests/test_store_kill.py).

``python tests/durable_child.py SPEC`` where SPEC is a JSON object:

- ``kind``: ``"batch"`` (a ParallelBatchNode of ``n`` fake LLM calls), ``"flow"`` (a
  flow of plain and batch steps with a loop) or ``"pbflow"`` (a ParallelBatchFlow of
  ``n`` sub-flows of three steps each);
- ``db``, ``run_id``: the store and the run;
- ``log``: every ``exec`` call appends ``start KEY`` when it starts and ``end KEY`` when
  it returns (one ``write`` each to a file opened with O_APPEND, so a SIGKILL loses none);
- ``out``: where the run writes its results and ``shared`` (JSON) when it finishes;
- ``kill_at`` / ``interrupt_at``: the process sends itself SIGKILL / SIGINT when the
  ``kill_at``-th exec call (1-based) starts;
- ``block_at``: the exec call that waits (up to 60 s) for the file ``release`` to exist;
- ``fail``: keys whose exec raises (``max_retries`` attempts, then the batch fails);
- ``flush_seconds``: the store's writer commits this seldom (unless 4,096 results wait), so
  what is committed when the run ends was committed by the run's final flush.

The process's exit code says how it ended: 0 done, 3 lease refused (the LeaseError is
printed), 4 a batch failed; killed by a signal otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

import trioflow
from trioflow.store import LeaseError

SPEC: dict[str, Any] = json.loads(sys.argv[1]) if __name__ == "__main__" else {}
_calls = 0
_log_fd = -1


def answer(key: str) -> dict[str, str]:
    """What the fake LLM answers for ``key`` (deterministic, so runs can be compared)."""
    return {"key": key, "text": f"summary of {key}"}


async def fake_llm(key: str) -> dict[str, str]:
    """A fake LLM call: logged at start and end; may kill, interrupt, block or fail as SPEC says."""
    global _calls
    _calls += 1
    os.write(_log_fd, f"start {key}\n".encode())
    if _calls == SPEC.get("kill_at"):
        os.kill(os.getpid(), signal.SIGKILL)
    if _calls == SPEC.get("interrupt_at"):
        os.kill(os.getpid(), signal.SIGINT)
    if _calls == SPEC.get("block_at"):
        release = trio.Path(SPEC["release"])
        with trio.fail_after(60):
            while not await release.exists():  # noqa: ASYNC110  (another process creates it: nothing to wait on)
                await trio.sleep(0.01)
    await trio.sleep(SPEC.get("latency", 0.0005))
    if key in SPEC.get("fail", ()):
        raise ConnectionError(f"the fake LLM failed on {key}")
    os.write(_log_fd, f"end {key}\n".encode())
    return answer(key)


class Summarize(trioflow.ParallelBatchNode):
    """Summarize every doc of ``shared["docs"]``."""

    def prep(self, shared: dict[str, Any]) -> list[str]:
        return list(shared["docs"])

    async def exec(self, doc: str) -> dict[str, str]:
        return await fake_llm(doc)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["summaries"] = exec_res


# -- kind "flow": Load -> Summarize -> Review <-> Revise (three rounds) -> Report -----------------


class Load(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> int:
        return int(shared["n"])

    async def exec(self, n: int) -> list[str]:
        await fake_llm("load")
        return [f"doc-{i}" for i in range(n)]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> None:
        shared["docs"] = exec_res
        shared["rounds"] = 0


class Review(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> list[Any]:
        return [shared["rounds"], shared["summaries"][0]["text"]]

    async def exec(self, prep_res: list[Any]) -> dict[str, str]:
        return await fake_llm(f"review-{prep_res[0]}")

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared.setdefault("reviews", []).append(exec_res["text"])
        return "revise" if shared["rounds"] < 3 else "approve"


class Revise(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> int:
        return int(shared["rounds"])

    async def exec(self, rounds: int) -> dict[str, str]:
        return await fake_llm(f"revise-{rounds}")

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["rounds"] += 1
        shared.pop("draft", None)
        shared["draft"] = exec_res["text"]


class Report(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> int:
        return len(shared["summaries"])

    async def exec(self, count: int) -> dict[str, str]:
        return await fake_llm(f"report-{count}")

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared["report"] = exec_res["text"]
        return "done"


def review_flow(cap: int) -> trioflow.Flow:
    load, summarize, review, revise = Load(), Summarize(max_concurrency=cap), Review(), Revise()
    load >> summarize >> review
    review - "revise" >> revise >> review
    review - "approve" >> Report()
    return trioflow.Flow(start=load)


# -- kind "pbflow": a ParallelBatchFlow of Fetch -> Condense -> Save per doc --------------------


class Fetch(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> str:
        return str(self.params["doc"])

    async def exec(self, doc: str) -> dict[str, str]:
        return await fake_llm(f"fetch-{doc}")

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["fetched"][prep_res] = exec_res["text"]


class Condense(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> str:
        return str(self.params["doc"])

    async def exec(self, doc: str) -> dict[str, str]:
        return await fake_llm(f"condense-{doc}")

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["condensed"][prep_res] = exec_res["text"]


class Save(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> str:
        return str(self.params["doc"])

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared["saved"][prep_res] = len(shared["condensed"][prep_res])
        return "saved"


class PerDoc(trioflow.ParallelBatchFlow):
    def prep(self, shared: dict[str, Any]) -> list[dict[str, str]]:
        shared.setdefault("fetched", {})
        shared.setdefault("condensed", {})
        shared.setdefault("saved", {})
        return [{"doc": f"doc-{i}"} for i in range(shared["n"])]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["actions"] = exec_res


def per_doc_flow(cap: int) -> trioflow.Flow:
    fetch = Fetch()
    fetch >> Condense() >> Save()
    return trioflow.Flow(start=PerDoc(start=fetch, max_concurrency=cap))


def main() -> int:
    global _log_fd
    _log_fd = os.open(SPEC["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if "flush_seconds" in SPEC:
        from trioflow import _durable

        _durable.FLUSH_SECONDS = SPEC["flush_seconds"]
    n, cap = SPEC["n"], SPEC["cap"]
    node: trioflow.Node
    if SPEC["kind"] == "batch":
        node, shared = Summarize(max_concurrency=cap, max_retries=SPEC.get("max_retries", 1)), {
            "docs": [f"doc-{i}" for i in range(n)]
        }
    elif SPEC["kind"] == "flow":
        node, shared = review_flow(cap), {"n": n}
    else:
        node, shared = per_doc_flow(cap), {"n": n}
    try:
        trioflow.run(node, shared, store=SPEC["db"], run_id=SPEC["run_id"])
    except LeaseError as exc:
        print(exc)
        return 3
    except trioflow.BatchError as exc:
        print(repr(exc.exceptions[0]))
        return 4
    Path(SPEC["out"]).write_text(json.dumps(shared, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
