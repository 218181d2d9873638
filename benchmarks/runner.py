"""Plan, run and report the benchmark (``python -m benchmarks --help``).

Each group (a scenario at one size and cap) runs a small warm-up per system
(discarded), then ``repeats`` rounds in which every system runs once, the
order rotated each round; then, unless ``--no-memory``, one fresh child
process per system (:mod:`benchmarks.child`) for its peak memory.

Scenario 4 is ``benchmarks.bridge.run_bridge(n)`` when that module exists:
an ``async def`` run under ``trio.run`` that returns ``{system name: seconds
per call}`` (it runs its own rounds and keeps each system's best).  The
system whose name contains ``aio_as_trio`` is the baseline of its target,
the first other one the system under test.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import workloads

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Group:
    """One row group of the table: a scenario at one size and cap, timed for several systems."""

    scenario: str
    n: int
    cap: int | None
    systems: tuple[str, ...]
    repeats: int

    @property
    def warm_n(self) -> int:
        """The size of the discarded warm-up run: small, so it costs little."""
        if self.scenario == "latency":
            return min(self.n, 2 * (self.cap or self.n))
        return min(self.n, 1000)


@dataclass
class Figure:
    """What was measured for one system in one group."""

    runs: list[float] = field(default_factory=list)  # wall seconds per timed run
    cpu: list[float] = field(default_factory=list)  # CPU seconds of the same runs
    peak_mb: float | None = None  # the child's peak RSS
    delta_mb: float | None = None  # peak minus the child's RSS before the run
    note: str = ""

    def us_per_item(self, n: int) -> list[float]:
        return [t / n * 1e6 for t in self.runs]


@dataclass
class Result:
    group: Group
    figures: dict[str, Figure]
    status: str = "ok"  # or "not available: ..."


def plan(mode: str, repeats: int | None) -> list[Group]:
    """The groups of a run.  ``full`` is the default; ``quick`` a first look; ``smoke`` for the tests."""
    trivial, latency, flow = workloads.TRIVIAL_SYSTEMS, workloads.LATENCY_SYSTEMS, workloads.FLOW_SYSTEMS
    floor_peers = ("trioflow", "pocketflow", "trio-pool")  # the systems the 1M targets name
    groups: list[Group] = []

    def add(scenario: str, n: int, cap: int | None, systems: tuple[str, ...], reps: int) -> None:
        if cap is None:  # a worker pool with no cap is the raw nursery
            systems = tuple(s for s in systems if s != "trio-pool")
        groups.append(Group(scenario, n, cap, systems, repeats or reps))

    if mode == "smoke":
        for cap in (8, None):
            add("trivial", 200, cap, trivial, 1)
        add("latency", 20, 10, latency, 1)
        add("flow", 20, None, flow, 1)
        add("bridge", 20, None, (), 1)
        return groups
    if mode == "quick":
        for cap in (1, 8, 64, None):
            add("trivial", 1000, cap, trivial, 3)
        for cap in (64, None):
            add("trivial", 10_000, cap, trivial, 3)
        add("trivial", 100_000, 64, floor_peers, 3)
        add("latency", 1000, 100, latency, 3)
        add("flow", 1000, None, flow, 3)
        add("bridge", 1000, None, (), 3)
        return groups
    for cap in (1, 8, 64, None):
        add("trivial", 1000, cap, trivial, 5)
        add("trivial", 10_000, cap, trivial, 5)
    for cap in (64, None):
        add("trivial", 100_000, cap, trivial, 3)
    add("trivial", 1_000_000, 64, floor_peers, 3)
    for cap in (10, 100):
        add("latency", 1000, cap, latency, 3)
    for n in (100, 1000, 10_000):
        for cap in (None, 64):
            add("flow", n, cap, flow, 5 if n < 10_000 else 3)
    add("bridge", 1000, None, (), 5)
    add("bridge", 10_000, None, (), 3)
    return groups


def steps(group: Group, memory: bool) -> int:
    """Progress-bar steps of a group: warm-ups, timed runs, memory children."""
    systems = max(len(group.systems), 1)
    return systems * (1 + group.repeats + (1 if memory else 0))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its peak memory and its baseline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def load_bridge() -> Callable[[int], Any] | str:
    """``benchmarks.bridge.run_bridge`` if it is there, else why not."""
    try:
        module = importlib.import_module("benchmarks.bridge")
    except ImportError as exc:
        return f"not available ({exc})"
    run_bridge = getattr(module, "run_bridge", None)
    return run_bridge if callable(run_bridge) else "not available (benchmarks.bridge has no run_bridge)"


def run_group(group: Group, memory: bool, advance: Callable[[str], None]) -> Result:
    """Time every system of ``group`` with alternating runs, then measure its memory."""
    if group.scenario == "bridge":
        return run_bridge_group(group, memory, advance)
    figures = {system: Figure() for system in group.systems}
    label = f"{group.scenario} N={group.n:,} cap={group.cap}"
    for system in group.systems:
        advance(f"{label}: warm-up {system}")
        workloads.time_once(group.scenario, system, group.warm_n, group.cap)  # discarded
        advance("")
    for rep in range(group.repeats):
        # rotate the order each repetition, so no system always runs first or last
        order = group.systems[rep % len(group.systems) :] + group.systems[: rep % len(group.systems)]
        for system in order:
            advance(f"{label}: {system} run {rep + 1}/{group.repeats}")
            gc.collect()
            wall, cpu = workloads.time_once(group.scenario, system, group.n, group.cap)
            figures[system].runs.append(wall)
            figures[system].cpu.append(cpu)
            advance("")
    if memory:
        # Children run side by side once the timing is over (a process's peak is its own);
        # the sleep-bound latency ones all at once, the CPU-bound ones one per core.
        advance(f"{label}: peak memory (a child process per system)")
        workers = len(group.systems) if group.scenario == "latency" else (os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            specs = [{"scenario": group.scenario, "system": s, "n": group.n, "cap": group.cap} for s in group.systems]
            for system, got in zip(group.systems, pool.map(child, specs), strict=True):
                figures[system].peak_mb = got["peak_mb"]
                figures[system].delta_mb = got["peak_mb"] - got["before_mb"]
                advance("")
    if group.scenario == "latency":
        assert group.cap is not None
        ideal = Figure(runs=[math.ceil(group.n / group.cap) * workloads.LATENCY], note="computed")
        figures["ideal"] = ideal
    return Result(group, figures)


def run_bridge_group(group: Group, memory: bool, advance: Callable[[str], None]) -> Result:
    """Scenario 4: ``benchmarks.bridge.run_bridge(n)`` returns seconds per call for each of its systems."""
    import trio

    run_bridge = load_bridge()
    if isinstance(run_bridge, str):
        for _ in range(steps(group, memory)):
            advance("")
        return Result(group, {}, status=run_bridge)
    label = f"bridge N={group.n:,}"
    figures: dict[str, Figure] = {}
    try:  # another module's code: its failure is reported, not fatal to the run
        advance(f"{label}: warm-up")
        trio.run(run_bridge, min(group.n, 100))
        advance("")
        for rep in range(group.repeats):
            advance(f"{label}: run {rep + 1}/{group.repeats}")
            gc.collect()
            got: dict[str, float] = trio.run(run_bridge, group.n)
            for system, per_call in got.items():
                figures.setdefault(system, Figure()).runs.append(per_call * group.n)
            advance("")
        got_mem = None
        if memory:
            advance(f"{label}: peak memory (child process)")
            got_mem = child({"scenario": "bridge", "system": "all", "n": group.n, "cap": None})
            advance("")
    except Exception as exc:
        return Result(group, {}, status=f"failed: {exc!r:.200}")
    if got_mem is not None:
        for figure in figures.values():
            figure.peak_mb = got_mem["peak_mb"]
            figure.delta_mb = got_mem["peak_mb"] - got_mem["before_mb"]
            figure.note = "peak of one process running all bridge systems"
    return Result(group, figures)


def iter_rows(results: list[Result]) -> Iterator[dict[str, Any]]:
    """Every figure as a flat record (the JSON ``results`` list)."""
    for result in results:
        g = result.group
        if result.status != "ok":
            yield {"scenario": g.scenario, "n": g.n, "cap": g.cap, "system": None, "status": result.status}
            continue
        ours = result.figures.get(ours_of(result))
        for system, figure in result.figures.items():
            us = figure.us_per_item(g.n)
            row: dict[str, Any] = {
                "scenario": g.scenario,
                "n": g.n,
                "cap": g.cap,
                "system": system,
                "label": workloads.SYSTEM_LABELS.get(system, system),
                "status": "ok",
                "runs_s": figure.runs,
                "cpu_s": figure.cpu,
                "us_per_item": {"median": statistics.median(us), "min": min(us), "max": max(us)},
                "peak_mb": figure.peak_mb,
                "delta_mb": figure.delta_mb,
                "note": figure.note,
            }
            if ours is not None and figure is not ours:
                row["ratio_time"] = statistics.median(ours.runs) / statistics.median(figure.runs)
                if ours.delta_mb is not None and figure.delta_mb is not None and figure.peak_mb is not None:
                    assert ours.peak_mb is not None
                    row["ratio_peak_mb"] = ours.peak_mb / figure.peak_mb
                    row["ratio_delta_mb"] = ours.delta_mb / figure.delta_mb if figure.delta_mb > 0 else None
            yield row


def ours_of(result: Result) -> str:
    """The system the ratios are for: trioflow, or in the bridge the adapter (not aio_as_trio)."""
    if "trioflow" in result.figures or result.group.scenario != "bridge":
        return "trioflow"
    names = [s for s in result.figures if "aio_as_trio" not in s]
    return names[0] if names else ""


def median_of(
    results: list[Result], scenario: str, system: str, pick: Callable[[Group], bool]
) -> tuple[Group, Figure] | None:
    """The (group, figure) of ``system`` in the largest matching group of ``scenario``."""
    found = [
        (r.group, r.figures[system])
        for r in results
        if r.group.scenario == scenario and pick(r.group) and system in r.figures
    ]
    return max(found, key=lambda gf: gf[0].n) if found else None


def targets(results: list[Result]) -> list[dict[str, Any]]:
    """Each target of DESIGN.md's performance contract, with the measured figure."""
    out: list[dict[str, Any]] = []

    def add(name: str, limit: str, value: float | None, ok: bool | None, where: str, cpu: float | None = None) -> None:
        out.append({"target": name, "limit": limit, "measured": value, "met": ok, "where": where, "cpu_ratio": cpu})

    def med(f: Figure) -> float:
        return statistics.median(f.runs)

    def cpu_ratio(a: Figure, b: Figure) -> float | None:
        """The same ratio on CPU time, less sensitive to a shared machine's load."""
        return statistics.median(a.cpu) / statistics.median(b.cpu) if a.cpu and b.cpu else None

    tf = median_of(results, "trivial", "trioflow", lambda g: g.cap == 64)
    pf = median_of(results, "trivial", "pocketflow", lambda g: g.cap == 64 and tf is not None and g.n == tf[0].n)
    pool = median_of(results, "trivial", "trio-pool", lambda g: g.cap == 64 and tf is not None and g.n == tf[0].n)
    where = f"trivial, N={tf[0].n:,}, cap 64" if tf else "not run"
    if tf and pf:
        speed = med(pf[1]) / med(tf[1])
        add("faster than PocketFlow", ">= 8x", speed, speed >= 8, where, cpu_ratio(pf[1], tf[1]))
        if tf[1].peak_mb and pf[1].peak_mb:
            mem = tf[1].peak_mb / pf[1].peak_mb
            add("peak memory vs PocketFlow (whole process)", "<= 0.10", mem, mem <= 0.1, where)
        if tf[1].delta_mb is not None and pf[1].delta_mb:
            mem = tf[1].delta_mb / pf[1].delta_mb
            add("memory growth of the run vs PocketFlow", "<= 0.10", mem, mem <= 0.1, where)
    if tf and pool:
        ratio = med(tf[1]) / med(pool[1])
        add("time vs hand-written Trio pool", "<= 1.5x", ratio, ratio <= 1.5, where, cpu_ratio(tf[1], pool[1]))
    tf_none = median_of(results, "trivial", "trioflow", lambda g: g.cap is None)
    raw = median_of(results, "trivial", "trio-nursery", lambda g: g.cap is None and tf_none is not None
                    and g.n == tf_none[0].n)
    if tf_none and raw:
        ratio = med(tf_none[1]) / med(raw[1])
        where = f"trivial, N={tf_none[0].n:,}, no cap"
        add("no cap: time vs raw Trio nursery", "<= 1.3x", ratio, ratio <= 1.3, where, cpu_ratio(tf_none[1], raw[1]))
    lat = median_of(results, "latency", "trioflow", lambda g: g.cap == 100)
    if lat:
        ideal = math.ceil(lat[0].n / 100) * workloads.LATENCY
        ratio = med(lat[1]) / ideal
        where = f"latency, N={lat[0].n:,}, cap 100"
        add(f"latency: wall time vs ideal {ideal:g} s", "<= 1.1x", ratio, ratio <= 1.1, where)
    bridges = [r for r in results if r.group.scenario == "bridge"]
    if bridges:
        last = max(bridges, key=lambda r: r.group.n)
        base = next((s for s in last.figures if "aio_as_trio" in s), None)
        ours = ours_of(last)
        if last.status != "ok" or base is None or ours not in last.figures:
            add("bridge: time vs aio_as_trio", "<= 1.2x", None, None, last.status if last.status != "ok"
                else f"bridge systems {list(last.figures)}: no aio_as_trio baseline")
        else:
            ratio = med(last.figures[ours]) / med(last.figures[base])
            add(f"bridge: {ours} vs {base}", "<= 1.2x", ratio, ratio <= 1.2, f"bridge, N={last.group.n:,}")
    return out


def cpu_model() -> str | None:
    """The CPU's model name, where ``/proc/cpuinfo`` tells it."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def environment() -> dict[str, Any]:
    """The machine, the Python and the package versions, for the JSON."""
    import platform
    from importlib import metadata

    packages: dict[str, str | None] = {}
    for name in ("trioflow", "trio", "attrs", "pocketflow", "aiometer", "anyio", "trio-asyncio", "rich", "matplotlib"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "commit": commit,
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model() or platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "packages": packages,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trioflow's parallel-batch benchmark, side by side with PocketFlow, asyncio, aiometer "
        "and plain Trio.  Default: the full run (about 10 minutes on 2 cores).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="a first look: smaller sizes, under a minute on 2 cores")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny sizes, a few seconds (the test suite runs this)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write every figure, machine and versions as JSON")
    parser.add_argument("--plot", metavar="PATH", type=Path, help="write a PNG of µs/item and peak MB against N")
    parser.add_argument("--markdown", metavar="PATH", type=Path, help="write the table as Markdown")
    parser.add_argument("--repeats", type=int, metavar="K", help="timed runs per system (default: 3 to 5 by size)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory child processes")
    parser.add_argument("--scenario", action="append", choices=("trivial", "latency", "flow", "bridge"),
                        help="run only this scenario (repeatable)")
    parser.set_defaults(mode="full")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import report

    args = parse_args(argv)
    groups = [g for g in plan(args.mode, args.repeats) if not args.scenario or g.scenario in args.scenario]
    console = Console(stderr=True)
    info = environment()
    results: list[Result] = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task("starting", total=sum(steps(g, args.memory) for g in groups))

        def advance(text: str) -> None:
            if text:
                progress.update(task, description=text)
            else:
                progress.advance(task)

        for group in groups:
            results.append(run_group(group, args.memory, advance))
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = list(iter_rows(results))
    goals = targets(results)
    out = Console(width=None if sys.stdout.isatty() else 160)
    report.print_table(out, rows, goals, mode=args.mode, info=info)
    if args.json:
        args.json.write_text(json.dumps({"mode": args.mode, **info, "results": rows, "targets": goals}, indent=1))
    if args.markdown:
        args.markdown.write_text(report.markdown(rows, goals))
    if args.plot:
        report.plot(rows, args.plot)
    return 0
