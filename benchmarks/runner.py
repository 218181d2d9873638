"""Plan, run and report the benchmark (``python -m benchmarks --help``).

The scenarios come from the registry (:mod:`benchmarks.scenarios`, one module
each; ``benchmarks/README.md`` says how to add one).  For each selected scenario
the runner asks its plan for the mode's groups, runs each group
(:meth:`benchmarks.core.Scenario.run_group`), then collects its targets, extra
tables, notes and plot panels, and prints one table for all.  A group that
raises is reported as "failed" and the run goes on (the exit code is then 1).

Progress goes to stderr: a live bar on a terminal, one plain line per step
otherwise (``python -m benchmarks > out.txt 2>&1`` shows how far it got).  The
tables go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from .core import ROOT, Context, ExtraTable, Group, Mode, Panel, Result, Scenario, Target, not_measured
from .scenarios import Registry, registry


@dataclass
class Run:
    """Everything one run measured, before it is printed."""

    mode: Mode
    scenarios: list[Scenario]
    results: list[Result] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    tables: list[ExtraTable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    panels: list[Panel] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what failed (exit code 1)


def plan(scenarios: Sequence[Scenario], mode: Mode, repeats: int | None = None) -> list[tuple[Scenario, Group]]:
    """The groups of a run, scenario by scenario in table order; ``repeats`` overrides every group's."""
    out: list[tuple[Scenario, Group]] = []
    for scenario in scenarios:
        for group in scenario.plan(mode):
            if group.scenario != scenario.name:
                raise ValueError(f"scenario {scenario.name!r} planned a group of {group.scenario!r}")
            out.append((scenario, replace(group, repeats=repeats) if repeats else group))
    return out


# -- progress ------------------------------------------------------------------------


class LineProgress:
    """Off a terminal: one plain line per step, ``[steps done/total, elapsed] what runs now``."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.start = time.monotonic()

    def line(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        stamp = f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
        print(f"[{self.done}/{self.total} {stamp}] {text}", file=self.stream, flush=True)

    def status(self, text: str) -> None:
        self.line(text)

    def advance(self, steps: int = 1) -> None:
        self.done += steps

    def settle(self, done: int) -> None:
        """After a group: the count its steps promised, whatever the group advanced."""
        self.done = done


class BarProgress:
    """On a terminal: rich's live bar (it vanishes at the end; the table stays)."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=total)

    def line(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def advance(self, steps: int = 1) -> None:
        self.progress.advance(self.task, steps)

    def settle(self, done: int) -> None:
        self.progress.update(self.task, completed=done)


# -- running -------------------------------------------------------------------------


def _failed(what: str, exc: Exception) -> str:
    return f"failed: {what}{type(exc).__name__}: {exc}"[:300]


def execute(scenarios: list[Scenario], groups: list[tuple[Scenario, Group]], *, mode: Mode, memory: bool,
            progress: LineProgress | BarProgress) -> Run:
    """Run every group, then ask each scenario that ran for its targets, tables, notes and panels."""
    run = Run(mode, scenarios)
    done = 0
    context = Context(progress, memory)
    for scenario, group in groups:
        done += scenario.count_steps(group, memory)
        try:
            result = scenario.run_group(group, context)
        except Exception as exc:
            traceback.print_exc()
            result = Result(group, {}, status=_failed("", exc))
        if result.status.startswith("failed"):
            run.errors.append(f"{group.label}: {result.status}")
            progress.line(f"{group.label}: {result.status}")
        run.results.append(result)
        progress.settle(done)
    for scenario in scenarios:
        mine = [r for r in run.results if r.group.scenario == scenario.name]
        if not mine:
            continue
        for part in ("targets", "tables", "notes", "panels"):
            try:
                got: list[Any] = getattr(scenario, part)(mine)
            except Exception as exc:
                traceback.print_exc()
                run.errors.append(f"{scenario.name}: {part}() {_failed('', exc)}")
                if part == "targets":
                    run.targets.append(not_measured(f"{scenario.name} targets", "-", _failed("targets() ", exc)))
                continue
            getattr(run, part).extend(got)
    return run


def broken_results(found: Registry) -> list[Result]:
    """A status row for each scenario module that did not load."""
    return [Result(Group(module, 0), {}, status=why) for module, why in found.broken.items()]


def iter_rows(results: list[Result], titles: dict[str, str], labels: dict[str, dict[str, str]],
              ) -> Iterator[dict[str, Any]]:
    """Every figure as a flat record (the JSON ``results`` list)."""
    for result in results:
        g = result.group
        head = {"scenario": g.scenario, "title": titles.get(g.scenario, g.scenario), "variant": g.variant,
                "n": g.n, "cap": g.cap, "params": dict(g.params)}
        if result.status != "ok":
            yield {**head, "system": None, "status": result.status}
            continue
        ours = result.figures.get(result.ours) if result.ours else None
        for system, figure in result.figures.items():
            us = figure.us_per_item(g.n)
            row: dict[str, Any] = {
                **head,
                "system": system,
                "label": labels.get(g.scenario, {}).get(system, system),
                "status": "ok",
                "runs_s": figure.runs,
                "cpu_s": figure.cpu,
                "us_per_item": {"median": statistics.median(us), "min": min(us), "max": max(us)},
                "peak_mb": figure.peak_mb,
                "delta_mb": figure.delta_mb,
                "note": figure.note,
                "extra": figure.extra,
            }
            if ours is not None and figure is not ours:
                row["ratio_time"] = ours.median / figure.median
                if ours.peak_mb is not None and figure.peak_mb:
                    row["ratio_peak_mb"] = ours.peak_mb / figure.peak_mb
                if ours.delta_mb is not None and figure.delta_mb:
                    row["ratio_delta_mb"] = ours.delta_mb / figure.delta_mb
            yield row


# -- the environment -----------------------------------------------------------------


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


# -- the command line ----------------------------------------------------------------


def parse_args(argv: list[str] | None, names: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trioflow's benchmark, side by side with PocketFlow, asyncio, aiometer and plain Trio, "
        "checked against the performance contract in README.md.  Default: the full run of every scenario "
        "(about 25 minutes on 2 cores).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="a first look: smaller sizes, three or four minutes on 2 cores")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny sizes, a few seconds (the test suite runs this)")
    parser.add_argument("--scenario", action="append", choices=list(names), metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(names)}")
    parser.add_argument("--n", action="append", type=int, metavar="N", dest="sizes",
                        help="run only the groups of N items (repeatable), e.g. --scenario trivial --n 1000000")
    parser.add_argument("--list", action="store_true", help="list the registered scenarios and exit")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write every figure, machine and versions as JSON")
    parser.add_argument("--plot", metavar="PATH", type=Path,
                        help="write a PNG with each scenario's panels (µs per item, peak MB, ...)")
    parser.add_argument("--markdown", metavar="PATH", type=Path, help="write the tables as Markdown")
    parser.add_argument("--repeats", type=int, metavar="K", help="timed runs per system (default: 3 to 5 by size)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory child processes")
    parser.set_defaults(mode="full")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import report

    found = registry()
    args = parse_args(argv, [*found.scenarios, *found.broken])
    if args.list:
        for scenario in found.scenarios.values():
            print(f"{scenario.name:12} {scenario.title:16} {scenario.about}")
        for module, why in found.broken.items():
            print(f"{module:12} {'':16} {why}")
        return 0
    wanted = args.scenario or [*found.scenarios, *found.broken]
    scenarios = [s for name, s in found.scenarios.items() if name in wanted]
    broken = [r for r in broken_results(found) if r.group.scenario in wanted]
    mode: Mode = args.mode
    groups = [(s, g) for s, g in plan(scenarios, mode, args.repeats) if not args.sizes or g.n in args.sizes]
    total = sum(s.count_steps(g, args.memory) for s, g in groups)
    info = environment()
    started = time.monotonic()
    err = Console(stderr=True)
    if err.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as live:
            run = execute(scenarios, groups, mode=mode, memory=args.memory, progress=BarProgress(live, total))
    else:
        lines = LineProgress(total, sys.stderr)
        lines.line(f"python -m benchmarks ({mode}): {len(groups)} groups, {total} steps; "
                   f"scenarios {', '.join(s.name for s in scenarios)}")
        run = execute(scenarios, groups, mode=mode, memory=args.memory, progress=lines)
        lines.line(f"done in {time.monotonic() - started:.0f} s")
    run.results[:0] = broken
    run.errors += [f"{r.group.scenario}: {r.status}" for r in broken if r.status.startswith("failed")]
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["elapsed_s"] = round(time.monotonic() - started, 1)
    titles = {s.name: s.title for s in found.scenarios.values()}
    labels = {s.name: dict(s.labels) for s in found.scenarios.values()}
    rows = list(iter_rows(run.results, titles, labels))
    goals = [asdict(t) for t in run.targets]
    out = Console(width=None if sys.stdout.isatty() else 160)
    report.print_report(out, rows, goals, run.tables, run.notes, mode=mode, info=info)
    if args.json:
        args.json.write_text(json.dumps({
            "mode": mode, **info,
            "scenarios": {s.name: {"title": s.title, "about": s.about, "module": found.modules[s.name]}
                          for s in scenarios},
            "results": rows, "targets": goals, "tables": [asdict(t) for t in run.tables], "notes": run.notes,
            "errors": run.errors,
        }, indent=1))
    if args.markdown:
        args.markdown.write_text(report.markdown(rows, goals, run.tables, run.notes))
    if args.plot:
        report.plot(run.panels, args.plot)
    for error in run.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if run.errors else 0
