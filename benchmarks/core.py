"""The scenario registry's API: what a scenario module gives the runner, and the helpers it may use.

A scenario is a module ``benchmarks/scenarios/<name>.py`` with a module-level
``SCENARIO = Scenario(...)``; :mod:`benchmarks.scenarios` finds it by itself
(no list to edit).  ``benchmarks/README.md`` walks through one; this module is
the reference.  The pieces, in the order the runner uses them:

- :class:`Group`: one block of table rows, a scenario at one size, cap and
  variant, timed for several systems.  ``Scenario.plan(mode)`` returns them.
- :class:`Context`: handed to a group's run; the progress reporter and
  whether to measure memory.
- :class:`Figure` / :class:`Result`: what a group's run returns, one
  :class:`Figure` (timed runs, peak memory, extra numbers) per system.
- :class:`Target`: one line of the targets table, a measured figure against a
  limit of the performance contract in README.md (:func:`at_most`,
  :func:`at_least`, :func:`not_measured` build them).
- :class:`Panel`, :class:`ExtraTable`: optional plot panels and extra tables.

Most scenarios only write ``plan`` and ``once`` (one system, one run, timed)
and let :func:`run_timed` do the rest: a discarded warm-up per system, then
``repeats`` rounds in which every system runs once (the order rotated each
round), then one fresh child process per system for its peak memory
(:mod:`benchmarks.child` calls the same ``once`` there).
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

ROOT = Path(__file__).resolve().parent.parent

Mode = Literal["full", "quick", "smoke"]
MODES: tuple[Mode, ...] = ("full", "quick", "smoke")
"""``full``: the default run (minutes); ``quick``: a first look (about a minute);
``smoke``: tiny sizes, seconds in all (the test suite runs every scenario's smoke plan)."""

_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")


@dataclass(frozen=True)
class Group:
    """One block of table rows: a scenario at one size, cap and variant, timed for several systems.

    A group must survive a JSON round trip (:meth:`to_json`, :meth:`from_json`):
    the memory child process gets it that way, so ``params`` holds JSON values only.

    Attributes:
        scenario: the :attr:`Scenario.name` it belongs to.
        n: the number of items (the table's ``N``; a figure's µs/item divides by it).
        cap: the concurrency cap, or None for none.
        systems: the systems to time, ours first (names are free; ``trioflow`` is ours by default).
        repeats: timed runs per system (``--repeats K`` overrides it).
        variant: a short word shown beside the scenario's title ("steady", "sqlite", "kill"); "" for none.
        params: the scenario's own knobs for this group, JSON values only.
        warm_n: the size of the discarded warm-up run; None: ``min(n, 1000)``.

    Example::

        Group("api", 1000, 64, ("trioflow", "fixed-cap"), 3, variant="dropping", params={"rate": 50})
    """

    scenario: str
    n: int
    cap: int | None = None
    systems: tuple[str, ...] = ()
    repeats: int = 3
    variant: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    warm_n: int | None = None

    @property
    def warm_size(self) -> int:
        """The size of the discarded warm-up run: small, so it costs little."""
        return self.warm_n if self.warm_n is not None else min(self.n, 1000)

    @property
    def label(self) -> str:
        """A short name for progress lines: ``latency N=1,000 cap 100``."""
        cap = "no cap" if self.cap is None else f"cap {self.cap}"
        variant = f" {self.variant}" if self.variant else ""
        return f"{self.scenario}{variant} N={self.n:,} {cap}"

    def to_json(self) -> dict[str, Any]:
        """The group as JSON values (for the memory child)."""
        out = asdict(self)
        out["params"] = dict(self.params)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Group:
        """The group back from :meth:`to_json`."""
        return cls(**{**data, "systems": tuple(data["systems"]), "params": dict(data["params"])})


@dataclass
class Figure:
    """What was measured for one system in one group.

    Attributes:
        runs: wall seconds of each timed run (the table shows their median and min-max per item).
        cpu: CPU seconds of the same runs (``time.process_time``), or empty.
        peak_mb: the peak RSS of a fresh process that ran it once, or None.
        delta_mb: that peak minus the process's RSS before the run, or None.
        note: a word for the reader; ``"computed"`` marks a figure that was not timed (an ideal).
        extra: the scenario's own numbers (``{"throttled_pct": 3.1}``), kept in the JSON rows.
    """

    runs: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    delta_mb: float | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def us_per_item(self, n: int) -> list[float]:
        """Each run's microseconds per item."""
        return [t / n * 1e6 for t in self.runs]

    @property
    def median(self) -> float:
        """The median wall seconds of the runs."""
        return statistics.median(self.runs)


@dataclass
class Result:
    """A group's outcome: a :class:`Figure` per system, or a status saying why there is none.

    Attributes:
        group: the group that ran.
        figures: system name to figure, in the order the table shows them.
        status: ``"ok"``; ``"not available: ..."`` (a missing optional piece: reported, not an
            error); or ``"failed: ..."`` (the runner sets it when the run raises; the exit code is 1).
            An ``"ok"`` result with no figures shows no row (an optional part left out quietly).
        ours: the system the table's ratios are for (each other system's ratio is ours ÷ its);
            "" for no ratios.
    """

    group: Group
    figures: dict[str, Figure]
    status: str = "ok"
    ours: str = "trioflow"

    def to_json(self) -> dict[str, Any]:
        """The result as JSON values (from an isolated group's child process)."""
        return {"group": self.group.to_json(), "figures": {s: asdict(f) for s, f in self.figures.items()},
                "status": self.status, "ours": self.ours}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        """The result back from :meth:`to_json`."""
        figures = {s: Figure(**f) for s, f in data["figures"].items()}
        return cls(Group.from_json(data["group"]), figures, data["status"], data["ours"])


@dataclass(frozen=True)
class Target:
    """One line of the targets table: a measured figure against a limit of the performance contract.

    Build it with :func:`at_most`, :func:`at_least` or :func:`not_measured`.

    Attributes:
        name: what is compared ("time vs the leanest Trio pool").
        limit: the limit as the reader sees it ("<= 1.1x").
        measured: the measured figure, or None.
        met: True, False, or None when not measured.
        where: the group it comes from ("trivial, N=1,000,000, cap 64") or why not measured.
        cpu_ratio: the same ratio on CPU time, where it makes sense.
    """

    name: str
    limit: str
    measured: float | None
    met: bool | None
    where: str
    cpu_ratio: float | None = None


def at_most(name: str, value: float, limit: float, where: str, *, cpu: float | None = None,
            unit: str = "x", limit_text: str | None = None) -> Target:
    """A target met when ``value <= limit``.  Example: ``at_most("time vs ideal", 1.03, 1.1, "latency")``."""
    return Target(name, limit_text or f"<= {limit:g}{unit}", value, value <= limit, where, cpu)


def at_least(name: str, value: float, limit: float, where: str, *, cpu: float | None = None,
             unit: str = "x", limit_text: str | None = None) -> Target:
    """A target met when ``value >= limit``.  Example: ``at_least("Processes vs inline", 1.8, 1.6, "cpu")``."""
    return Target(name, limit_text or f">= {limit:g}{unit}", value, value >= limit, where, cpu)


def not_measured(name: str, limit: str, why: str) -> Target:
    """A target that this run could not measure, and why (shown as "not measured")."""
    return Target(name, limit, None, None, why)


def ratio(a: Figure, b: Figure) -> float:
    """``a``'s median wall time ÷ ``b``'s."""
    return a.median / b.median


def cpu_ratio(a: Figure, b: Figure) -> float | None:
    """The same ratio on CPU time, less sensitive to a shared machine's load; None without CPU times."""
    return statistics.median(a.cpu) / statistics.median(b.cpu) if a.cpu and b.cpu else None


def largest(results: Sequence[Result], system: str, pick: Callable[[Group], bool] = lambda g: True,
            ) -> tuple[Group, Figure] | None:
    """The (group, figure) of ``system`` in the largest group (by ``n``) that ``pick`` accepts, or None."""
    found = [(r.group, r.figures[system]) for r in results
             if r.status == "ok" and pick(r.group) and system in r.figures]
    return max(found, key=lambda gf: gf[0].n) if found else None


def figures_in(results: Sequence[Result], group: Group) -> dict[str, Figure]:
    """Every system's figure in ``group`` (as :func:`largest` found it), or {} if it did not run ok."""
    return next((r.figures for r in results if r.group == group and r.status == "ok"), {})


@dataclass(frozen=True)
class Panel:
    """One panel of the ``--plot`` PNG, as data; the runner draws every panel alike.

    Each system keeps one colour across all panels, and tick labels are plain
    numbers (1,000 / 10k), so a scenario only says what to draw.

    Attributes:
        title: the panel's title ("trivial, cap 64: µs per item").
        series: system name to its points ``(x, y)``.  Numeric x: a line per system;
            string x (cases such as "steady", "dropping"): grouped bars.
        x_label, y_label: the axis labels.
        log_x, log_y: logarithmic axes (ignored for x when x is categorical).
        reference: a horizontal dashed line at this y (1.0 for "÷ ideal"), or None.
    """

    title: str
    series: Mapping[str, Sequence[tuple[float | str, float]]]
    x_label: str = "N items"
    y_label: str = "µs per item (median)"
    log_x: bool = True
    log_y: bool = True
    reference: float | None = None


Series = dict[str, list[tuple[float | str, float]]]
"""A panel's points: system name to its ``(x, y)`` pairs."""


def us_per_item(group: Group, figure: Figure) -> float:
    """The median µs per item of ``figure`` (a :func:`series` ``y``)."""
    return figure.median / group.n * 1e6


def series(results: Sequence[Result], y: Callable[[Group, Figure], float | None], *,
           x: Callable[[Group], float | str] = lambda g: g.n, pick: Callable[[Group], bool] = lambda g: True,
           ) -> Series:
    """The points of a :class:`Panel`: ``(x(group), y(group, figure))`` for each system of each ok result.

    Only results whose group ``pick`` accepts count; a ``y`` of None leaves the point out.
    Example, µs per item against N at cap 64::

        Panel("cap 64: µs per item", series(results, us_per_item, pick=lambda g: g.cap == 64))
    """
    out: Series = {}
    for result in results:
        if result.status != "ok" or not pick(result.group):
            continue
        for system, figure in result.figures.items():
            value = y(result.group, figure)
            if value is not None:
                out.setdefault(system, []).append((x(result.group), value))
    return out


def vs_ideal_panels(results: Sequence[Result], title: str, ideal: Callable[[Group], float]) -> list[Panel]:
    """One bar panel of wall time ÷ ``ideal(group)`` per group, a bar per system (the ideal is 1);
    the computed "ideal" rows themselves are left out.  None when no result is ok."""
    points = series(results, lambda g, f: None if f.note == "computed" else f.median / ideal(g),
                    x=lambda g: f"N={g.n:,}, cap {g.cap}")
    if not points:
        return []
    return [Panel(title, points, x_label="", y_label="wall time ÷ ideal", log_y=False, reference=1.0)]


@dataclass(frozen=True)
class ExtraTable:
    """A table printed after the main one (and put in the Markdown and the JSON).

    Example: ``ExtraTable("retries", ("system", "attempts"), [["trioflow", "1,032"]])``.
    """

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str | None = None


class Progress(Protocol):
    """Progress reporting: a live bar on a terminal, one plain line per status otherwise."""

    def status(self, text: str) -> None:
        """Say what runs now (``"latency N=1,000 cap 100: trioflow run 2/3"``)."""

    def advance(self, steps: int = 1) -> None:
        """Mark ``steps`` of the group's :meth:`Scenario.count_steps` done."""


@dataclass
class Context:
    """What a group's run gets from the runner.

    Attributes:
        progress: call ``status`` before each step and ``advance`` after it.
        memory: measure peak memory (False under ``--no-memory``).
    """

    progress: Progress
    memory: bool


def _no_results(results: Sequence[Result]) -> list[Any]:
    return []


@dataclass(frozen=True)
class Scenario:
    """A scenario: what the runner needs to plan, run, judge and draw it.

    Give ``once`` (and let :func:`run_timed` run each group) or ``run`` (your own loop), or both
    (``run`` wrapping :func:`run_timed`, as the latency scenario does to add its ideal).

    Attributes:
        name: the ``--scenario`` name: lowercase letters, digits and ``-`` ("dask-scale").
        title: the table's label, numbered for order ("5 throttled API").
        about: one line for ``--list`` and the JSON: what runs against what.
        plan: ``plan(mode) -> list[Group]``, the groups for ``full``, ``quick`` and ``smoke``.
            Smoke groups must take well under a second or two in all: the test suite runs them.
        once: ``once(group, system) -> (wall s, CPU s)``: one run of ``system`` at ``group.n``,
            timed around the run alone (event loop start-up excluded).  Also what the memory child
            runs.  Raise (an ``AssertionError``, say) when a run's output is wrong.
        run: ``run(group, context) -> Result``, when :func:`run_timed` does not fit.
        targets: ``targets(results) -> list[Target]``, given this scenario's results only
            (called only when at least one of its groups ran).
        panels: ``panels(results) -> list[Panel]``, its part of the ``--plot`` PNG.
        tables: ``tables(results) -> list[ExtraTable]``, printed after the main table.
        notes: ``notes(results) -> list[str]``, lines printed under the tables.
        steps: ``steps(group, memory) -> int``, progress steps of a group; default
            :func:`timed_steps` (the count :func:`run_timed` advances).
        labels: system name to a one-line description (JSON rows and ``--list``).
        order: position in the table and the plot (1-4 are taken: trivial, latency, flow, bridge).
        sleep_bound: its runs mostly wait (sleeps, loopback I/O): the memory children of a group
            run all at once rather than one per core.
        isolated: run each group in a child process of its own (:func:`run_in_child`), so what
            it imports cannot change the scenarios that run after it.  Needed by anything that
            imports ``trio_asyncio`` (``adapters.aio``, ``adapters.pocketflow``): once imported,
            it makes ``asyncio.run`` build trio-asyncio loops, and every asyncio peer timed
            later in that process runs about 8x slower.  Keep ``plan`` free of such imports.
    """

    name: str
    title: str
    about: str
    plan: Callable[[Mode], list[Group]]
    once: Callable[[Group, str], tuple[float, float]] | None = None
    run: Callable[[Group, Context], Result] | None = None
    targets: Callable[[Sequence[Result]], list[Target]] = _no_results
    panels: Callable[[Sequence[Result]], list[Panel]] = _no_results
    tables: Callable[[Sequence[Result]], list[ExtraTable]] = _no_results
    notes: Callable[[Sequence[Result]], list[str]] = _no_results
    steps: Callable[[Group, bool], int] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    order: int = 100
    sleep_bound: bool = False
    isolated: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"scenario name {self.name!r}: use lowercase letters, digits and '-'")
        if self.once is None and self.run is None:
            raise ValueError(f"scenario {self.name!r}: give once= (timed by run_timed) or run=")

    def run_group(self, group: Group, context: Context, *, here: bool = False) -> Result:
        """Run one of its groups: ``run`` if given, else :func:`run_timed` with ``once``.

        An ``isolated`` scenario's group runs in a child process (:func:`run_in_child`)
        unless ``here`` is true (the child itself, or a test that does not mind the imports).
        """
        if self.isolated and not here:
            return run_in_child(group, context)
        if self.run is not None:
            return self.run(group, context)
        return run_timed(self, group, context)

    def count_steps(self, group: Group, memory: bool) -> int:
        """Progress steps of ``group``."""
        return self.steps(group, memory) if self.steps is not None else timed_steps(group, memory)


def timed_steps(group: Group, memory: bool) -> int:
    """Steps of :func:`run_timed`: a warm-up, the timed runs and a memory child per system."""
    return max(len(group.systems), 1) * (1 + group.repeats + (1 if memory else 0))


def run_timed(scenario: Scenario, group: Group, context: Context) -> Result:
    """Time every system of ``group`` with ``scenario.once``, alternating, then measure memory.

    A discarded warm-up run (``group.warm_size`` items) per system; then ``group.repeats``
    rounds in which each system runs once, the order rotated each round so no system
    always runs first or last; then, if ``context.memory``, one fresh child process per
    system (:func:`measure_in_child`) for its peak memory.
    """
    once = scenario.once
    if once is None:
        raise TypeError(f"scenario {scenario.name!r} has no once=")
    progress = context.progress
    systems = group.systems
    figures = {system: Figure() for system in systems}
    for system in systems:
        progress.status(f"{group.label}: warm-up {system}")
        once(replace(group, n=group.warm_size), system)  # discarded
        progress.advance()
    for rep in range(group.repeats):
        order = systems[rep % len(systems):] + systems[: rep % len(systems)]
        for system in order:
            progress.status(f"{group.label}: {system} run {rep + 1}/{group.repeats}")
            gc.collect()
            wall, cpu = once(group, system)
            figures[system].runs.append(wall)
            figures[system].cpu.append(cpu)
            progress.advance()
    if context.memory:
        # Children run once the timing is over (a process's peak is its own); sleep-bound
        # ones all at once, CPU-bound ones one per core.
        progress.status(f"{group.label}: peak memory (a child process per system)")
        workers = len(systems) if scenario.sleep_bound else (os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            for system, got in zip(systems, pool.map(lambda s: measure_in_child(group, s), systems), strict=True):
                figures[system].peak_mb = got["peak_mb"]
                figures[system].delta_mb = got["peak_mb"] - got["before_mb"]
                progress.advance()
    return Result(group, figures)


def measure_in_child(group: Group, system: str, *, timeout: float = 3600) -> dict[str, Any]:
    """Run ``scenario.once(group, system)`` in a fresh interpreter; its RSS before and its peak (MB).

    The child imports only the scenario's own module (so its baseline holds what that
    scenario imports), then runs once.  Returns ``{"before_mb", "peak_mb", "seconds"}``.
    """
    from .scenarios import module_of

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    spec = {"module": module_of(group.scenario), "group": group.to_json(), "system": system}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", json.dumps(spec)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {group.label} / {system} exited {out.returncode}: "
                           f"{out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_in_child(group: Group, context: Context, *, timeout: float = 3600) -> Result:
    """Run ``group`` in a fresh interpreter (``python -m benchmarks.child``) and return its :class:`Result`.

    The child reports its progress as JSON lines on stderr, relayed here to
    ``context.progress``; its other stderr lines (a traceback) are kept for the error.
    """
    from .scenarios import module_of

    spec = {"module": module_of(group.scenario), "group": group.to_json(), "memory": context.memory}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    other: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "benchmarks.child", "--group", json.dumps(spec)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as child:
        assert child.stderr is not None and child.stdout is not None
        for line in child.stderr:
            event = json.loads(line) if line.startswith('{"progress"') else None
            if event is None:
                other.append(line)
            elif "status" in event:
                context.progress.status(event["status"])
            else:
                context.progress.advance(event["advance"])
        out = child.stdout.read()
        code = child.wait(timeout=timeout)
    if code != 0:
        raise RuntimeError(f"child process for {group.label} exited {code}: {''.join(other).strip()[-800:]}")
    return Result.from_json(json.loads(out.strip().splitlines()[-1]))


def fmt_n(x: float) -> str:
    """A count or size the way the table and the plot print it: 1,000, 10k, 1M, 0.5."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1_000_000 and x % 100_000 == 0:
        return f"{x / 1_000_000:g}M"
    if abs(x) >= 10_000 and x % 1000 == 0:
        return f"{x / 1000:g}k"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:g}"
