"""Scenario 7, ``durable``: what a store costs a run, and what a resume after a kill costs.

``python -m benchmarks.durable [--smoke | --quick] [any option of python -m benchmarks]`` runs
this scenario alone (``python -m benchmarks --scenario durable`` does the same).

Three groups, each the same ``ParallelBatchNode`` (items from a generator, results to ``post``):

- ``trivial``: 1,000,000 items of ``await sleep(0)``, cap 64, with a SQLite store
  (a fresh file each run, its tables made before the timing: a store's first run
  aside, a run finds them there) against the same run without one.  Target: at least
  0.35x the speed without (the store pickles each result, keys it, and a writer
  thread commits it, 4,096 a transaction).
- ``latency``: 1,000 items of 50 ms, cap 100, with and without a store.  Target:
  within 1.05x (the store's work hides in the waits).
- ``resume``: a 1,000,000-item run (cap 64) in a child process that SIGKILLs
  itself when item 900,000 starts, then the run again in this process: the time
  to load the done set (about 900,000 results) and to finish, against an
  uninterrupted run with a store, and how many items ran twice.  Targets: what
  the resume takes once the done set is loaded and skipped (up to its first exec
  call) at most 0.1x the uninterrupted run (the time of its last 10 %); items run
  twice at most the cap plus one window of the writer (4,096 results).

The ``resume`` group's figures: ``uninterrupted`` (a full run with a store) and
``resume`` (load, skip and finish); its extra table splits the resume in two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

import trioflow
from trioflow import _durable
from trioflow.store import SQLiteStore

from .core import (
    ROOT,
    Context,
    ExtraTable,
    Figure,
    Group,
    Mode,
    Panel,
    Result,
    Scenario,
    Target,
    at_least,
    at_most,
    cpu_ratio,
    fmt_n,
    run_timed,
)

STORE, PLAIN = "sqlite store", "no store"
UNINTERRUPTED, RESUME = "uninterrupted", "resume"
LATENCY = 0.05  # seconds per simulated call of the latency group
KILL_AT = 0.9  # the fraction of the items started when the resume group's run is killed


class Work(trioflow.ParallelBatchNode):
    """``n`` items from a generator; each waits ``delay`` seconds (``sleep(0)``: a trivial item)."""

    def prep(self, shared: dict[str, Any]) -> Iterator[int]:
        return (i for i in range(shared["n"]))

    async def exec(self, item: int) -> int:
        await trio.sleep(self.params["delay"])
        return item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["results"] = exec_res


class Counted(Work):
    """:class:`Work` that counts its exec calls (``params["calls"]``, a list of items, and the time of
    the first in ``params["first"]``) and, as a kill victim, SIGKILLs its own process when the
    ``params["kill_at"]``-th call starts."""

    async def exec(self, item: int) -> int:
        calls: list[int] = self.params["calls"]
        if not calls:
            self.params["first"].append(time.perf_counter())
        calls.append(item)
        if len(calls) == self.params.get("kill_at"):
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().exec(item)


def check(shared: dict[str, Any], n: int) -> None:
    results = shared["results"]
    assert len(results) == n and results[:3] == list(range(min(n, 3))) and results[-1] == n - 1, "wrong results"


async def timed_run(node: trioflow.Node, n: int, store: Path | None) -> tuple[float, float, dict[str, Any]]:
    """One run of ``node`` over ``n`` items (durable if ``store``): wall and CPU seconds, and ``shared``."""
    shared: dict[str, Any] = {"n": n}
    start, start_cpu = time.perf_counter(), time.process_time()
    await node.run(shared, store=store, run_id="bench" if store is not None else None)
    return time.perf_counter() - start, time.process_time() - start_cpu, shared


def once(group: Group, system: str) -> tuple[float, float]:
    """One run of the trivial or latency group, with a fresh store file or none."""
    delay = LATENCY if group.variant == "latency" else 0.0
    node = Work(max_concurrency=group.cap)
    node.set_params({"delay": delay})
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "runs.db" if system == STORE else None
        if store is not None:
            SQLiteStore(store).open().close()  # the file and its tables exist, as for any run but a store's first
        wall, cpu, shared = trio.run(timed_run, node, group.n, store)
    check(shared, group.n)
    return wall, cpu


# -- the resume group -------------------------------------------------------------------------------


def kill_victim(spec: dict[str, Any]) -> None:
    """``python -m benchmarks.durable --victim SPEC``: the run that kills itself at ``kill_at`` calls."""
    node = Counted(max_concurrency=spec["cap"])
    node.set_params({"delay": 0.0, "calls": [], "first": [], "kill_at": spec["kill_at"]})
    trioflow.run(node, {"n": spec["n"]}, store=spec["store"], run_id="bench")
    raise SystemExit("the run finished: it was to be killed first")


def load_seconds(store: Path) -> float:
    """How long loading the recorded results of the batch takes (the query a resumed run makes);
    0 if the killed run committed none (a tiny run dies before its first commit)."""
    conn = SQLiteStore(store).open()
    try:
        batches = conn.recorded("bench")
        start = time.perf_counter()
        for nid in batches:
            conn.load_done(nid)
        return time.perf_counter() - start
    finally:
        conn.close()


def resume(group: Group, context: Context) -> Result:
    """An uninterrupted run with a store; a run SIGKILLed at 90 % in a child; its resume here."""
    n, cap = group.n, group.cap
    kill_at = int(n * KILL_AT)
    figures = {UNINTERRUPTED: Figure(), RESUME: Figure()}
    progress = context.progress
    for rep in range(group.repeats):
        with tempfile.TemporaryDirectory() as folder:
            progress.status(f"{group.label}: uninterrupted run with a store {rep + 1}/{group.repeats}")
            node = Work(max_concurrency=cap)
            node.set_params({"delay": 0.0})
            wall, cpu, shared = trio.run(timed_run, node, n, Path(folder) / "full.db")
            check(shared, n)
            figures[UNINTERRUPTED].runs.append(wall)
            figures[UNINTERRUPTED].cpu.append(cpu)
            progress.advance()
            progress.status(f"{group.label}: a run killed at item {kill_at:,} (a child process)")
            store = Path(folder) / "killed.db"
            spec = {"n": n, "cap": cap, "kill_at": kill_at, "store": str(store)}
            victim = subprocess.run(
                [sys.executable, "-m", "benchmarks.durable", "--victim", json.dumps(spec)], cwd=ROOT,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                capture_output=True, text=True, timeout=3600, check=False,
            )
            assert victim.returncode == -signal.SIGKILL, victim.stderr[-800:]
            progress.advance()
            load = load_seconds(store)
            progress.status(f"{group.label}: resume {rep + 1}/{group.repeats}")
            calls: list[int] = []
            first: list[float] = []
            node = Counted(max_concurrency=cap)
            node.set_params({"delay": 0.0, "calls": calls, "first": first})
            start = time.perf_counter()
            wall, cpu, shared = trio.run(timed_run, node, n, store)
            check(shared, n)
            figure = figures[RESUME]
            figure.runs.append(wall)
            figure.cpu.append(cpu)
            extra = {
                "load_s": load,  # the query alone, measured apart
                "skip_s": first[0] - start,  # start, load and skip the recorded items, up to the first exec
                "ran": float(len(calls)),
                "ran_twice": float(sum(1 for item in calls if item < kill_at)),  # the first kill_at had started
            }
            for key, value in extra.items():  # keep the worst (largest) of the repeats
                figure.extra[key] = max(figure.extra.get(key, value), value)
            progress.advance()
    return Result(group, figures, ours=RESUME)


# -- plan, targets, tables ----------------------------------------------------------------------------


def plan(mode: Mode) -> list[Group]:
    big = {"full": 1_000_000, "quick": 100_000, "smoke": 2_000}[mode]
    latency_n, latency_cap = (20, 10) if mode == "smoke" else (1000, 100)
    repeats = {"full": 3, "quick": 2, "smoke": 1}[mode]
    return [
        Group("durable", big, 64, (STORE, PLAIN), repeats, variant="trivial"),
        Group("durable", latency_n, latency_cap, (STORE, PLAIN), repeats, variant="latency", warm_n=latency_cap),
        Group("durable", big, 64, (RESUME, UNINTERRUPTED), 1, variant="resume"),
    ]


def run(group: Group, context: Context) -> Result:
    if group.variant == "resume":
        return resume(group, context)
    result = run_timed(SCENARIO, group, context)
    result.ours = STORE
    return result


def steps(group: Group, memory: bool) -> int:
    if group.variant == "resume":
        return 3 * group.repeats
    return len(group.systems) * (1 + group.repeats + (1 if memory else 0))


def _group(results: Sequence[Result], variant: str) -> Result | None:
    found = [r for r in results if r.group.variant == variant and r.status == "ok" and r.figures]
    return max(found, key=lambda r: r.group.n) if found else None


def targets(results: Sequence[Result]) -> list[Target]:
    out: list[Target] = []
    trivial = _group(results, "trivial")
    if trivial is not None:
        store, plain = trivial.figures[STORE], trivial.figures[PLAIN]
        cpu = cpu_ratio(plain, store)
        out.append(at_least("durable: trivial items, speed with a store vs without", plain.median / store.median,
                            0.35, f"durable trivial, N={trivial.group.n:,}, cap {trivial.group.cap}", cpu=cpu))
    latency = _group(results, "latency")
    if latency is not None:
        store, plain = latency.figures[STORE], latency.figures[PLAIN]
        out.append(at_most("durable: 50 ms items, time with a store vs without", store.median / plain.median, 1.05,
                           f"durable latency, N={latency.group.n:,}, cap {latency.group.cap}"))
    resumed = _group(results, "resume")
    if resumed is not None:
        full, again = resumed.figures[UNINTERRUPTED], resumed.figures[RESUME]
        where = f"durable resume, N={resumed.group.n:,}, cap {resumed.group.cap}, killed at 90 %"
        rest = again.median - again.extra["skip_s"]
        out.append(at_most("durable: resume after loading the done set, vs 0.1 x the uninterrupted run",
                           rest / (0.1 * full.median), 1.0, where))
        window = (resumed.group.cap or 0) + _durable.FLUSH_ROWS
        out.append(at_most("durable: items run twice after the kill", again.extra["ran_twice"], window, where,
                           unit="", limit_text=f"<= cap + one window = {window:,}"))
    return out


def tables(results: Sequence[Result]) -> list[ExtraTable]:
    resumed = _group(results, "resume")
    if resumed is None:
        return []
    full, again = resumed.figures[UNINTERRUPTED], resumed.figures[RESUME]
    n = resumed.group.n
    kill_at = int(n * KILL_AT)
    skip, load, ran = again.extra["skip_s"], again.extra["load_s"], int(again.extra["ran"])
    rows = [
        ["uninterrupted run with a store", f"{full.median:.2f}", f"{n:,} run"],
        [f"resume after SIGKILL at item {kill_at:,}", f"{again.median:.2f}",
         f"{ran:,} run, {int(again.extra['ran_twice']):,} of them twice"],
        ["  load the done set and skip it", f"{skip:.2f}",
         f"{n - ran:,} results (the query alone: {load:.2f} s), {(n - ran) / max(skip, 1e-9):,.0f} per second"],
        ["  then the rest", f"{again.median - skip:.2f}",
         f"{(again.median - skip) / full.median:.3f} of the uninterrupted run"],
    ]
    return [ExtraTable(f"durable resume, N={fmt_n(n)}, cap {resumed.group.cap}", ("run", "seconds", "items"), rows)]


def panels(results: Sequence[Result]) -> list[Panel]:
    points: dict[str, list[tuple[float | str, float]]] = {}
    for variant in ("trivial", "latency"):
        found = _group(results, variant)
        if found is not None:
            for system in (STORE, PLAIN):
                points.setdefault(system, []).append((variant, found.figures[system].median / found.group.n * 1e6))
    if not points:
        return []
    return [Panel("durable: µs per item with and without a store", points, x_label="", log_y=True)]


SCENARIO = Scenario(
    name="durable",
    title="7 durable",
    about="a SQLite store's cost (1M trivial items; 1,000 x 50 ms) and a resume after SIGKILL at 90 % of 1M",
    plan=plan,
    once=once,
    run=run,
    targets=targets,
    tables=tables,
    panels=panels,
    steps=steps,
    labels={
        STORE: "ParallelBatchNode run with store= (a fresh SQLite file)",
        PLAIN: "the same run without a store",
        UNINTERRUPTED: "a run with a store, start to end",
        RESUME: "the run again after a SIGKILL at 90 %: load the done set, run the rest",
    },
    order=7,
)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.durable [options of python -m benchmarks]``: this scenario alone."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--victim"]:
        kill_victim(json.loads(args[1]))
    from .runner import main as run_benchmarks

    return run_benchmarks(["--scenario", "durable", *args])


if __name__ == "__main__":
    raise SystemExit(main())
