"""The tables (rich and Markdown) and the plot (matplotlib) of a run."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .core import ExtraTable, Panel, fmt_n

TARGET_HEADERS = ("target", "limit", "measured (wall)", "", "same on CPU time", "where")
HEADERS = ("scenario", "N", "cap", "system", "µs/item", "min-max", "peak MB", "Δ MB", "time ratio", "peak ratio")
CAPTION = (
    "µs/item: median (and min-max) of the timed runs, the warm-up discarded.  peak MB: the peak RSS of a fresh "
    "process that ran the configuration once; Δ MB: that peak minus the process's RSS before the run.  "
    "ratios: trioflow's figure ÷ this system's (below 1: trioflow is faster / leaner); in the bridge, the "
    "wrapped node's."
)
TARGETS_TITLE = "targets (the performance contract in README.md)"

# One colour per system in every panel; systems not named here get the next free colour.
COLOURS = {
    "trioflow": "#1f77b4",
    "pocketflow": "#d62728",
    "asyncio-sem": "#ff7f0e",
    "aiometer": "#9467bd",
    "trio-nursery": "#8c564b",
    "trio-lean": "#2ca02c",
    "trio-pool": "#bcbd22",
    "ideal": "#000000",
    "trioflow-aio": "#17becf",
    "aio_as_trio": "#7f7f7f",
    # the peers and references of the later scenarios: a colour of their own each, none grey
    "adapters.pocketflow": "#393b79",
    "anyio": "#e377c2",
    "cap-25": "#637939",
    "cap-50": "#8c6d31",
    "provider limit": "#444444",
    "perfect pool": "#b5cf6b",
    "sqlite store": "#3182bd",
    "no store": "#9ecae1",
    "processes": "#e6550d",
    "threads": "#fdae6b",
    "inline": "#843c39",
    "process-pool": "#31a354",
    "dask": "#756bb1",
    "dask-submit": "#bcbddc",
    "thread-pool": "#a1d99b",
    "trio-to-thread": "#d6616b",
    "submit-loop": "#de9ed6",
}
SPARE_COLOURS = ("#7b4173", "#6b6ecf", "#bd9e39", "#e7969c", "#9c9ede", "#e7cb94", "#636363", "#cedb9c",
                 "#ad494a", "#8ca252", "#5254a3", "#e7ba52", "#a55194", "#c6dbef", "#fd8d3c", "#74c476")


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def cells(rows: Iterable[dict[str, Any]]) -> list[list[str]]:
    """The table's rows as strings; a ratio below 1 means trioflow took less time."""
    out: list[list[str]] = []
    previous: tuple[Any, ...] = ()
    for row in rows:
        key = (row["scenario"], row["variant"], row["n"], row["cap"])
        first = key != previous
        previous = key
        title = row["title"] + (f": {row['variant']}" if row["variant"] else "")
        head = [title, f"{row['n']:,}", "none" if row["cap"] is None else str(row["cap"])] if first else ["", "", ""]
        if row["status"] != "ok":
            out.append([*head, row["status"], *[""] * (len(HEADERS) - 4)])
            continue
        us = row["us_per_item"]
        ratio, peak_ratio = row.get("ratio_time"), row.get("ratio_peak_mb")
        spread = "" if row["note"] == "computed" else f"{_num(us['min'], 2)}-{_num(us['max'], 2)}"
        out.append([
            *head,
            row["system"],
            _num(us["median"], 2),
            spread,
            _num(row["peak_mb"]),
            _num(row["delta_mb"]),
            "" if ratio is None else f"{ratio:.2f}",
            "" if peak_ratio is None else f"{peak_ratio:.2f}",
        ])
    return out


def target_cells(goals: Iterable[dict[str, Any]]) -> list[list[str]]:
    out = []
    for goal in goals:
        met = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        value = "-" if goal["measured"] is None else f"{goal['measured']:.2f}"
        cpu = "" if goal.get("cpu_ratio") is None else f"{goal['cpu_ratio']:.2f}"
        out.append([goal["name"], goal["limit"], value, met, cpu, goal["where"]])
    return out


def _small_run_caption(mode: str) -> str | None:
    if mode == "full":
        return None
    return (f"a {mode} run: the targets are set at the full run's sizes (1,000,000 items for the trivial "
            "targets); at these smaller sizes the process baseline weighs on memory and start-up on time")


def print_report(console: Console, rows: list[dict[str, Any]], goals: list[dict[str, Any]],
                 tables: Sequence[ExtraTable], notes: Sequence[str], *, mode: str, info: dict[str, Any]) -> None:
    """The main table, the scenarios' extra tables and notes, then the targets."""
    machine = info["machine"]
    table = Table(
        title=f"python -m benchmarks ({mode}), {machine['cpu_count']} CPUs, "
        f"load {_load(machine['loadavg'])} → {_load(info['loadavg_end'])}",
        caption=CAPTION,
    )
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("scenario", "system") else "right")
    previous = ""
    for line in cells(rows):
        if line[0] and previous and line[0] != previous:
            table.add_section()
        previous = line[0] or previous
        table.add_row(*line)
    console.print(table)
    for extra in tables:
        more = Table(title=extra.title, caption=extra.caption)
        for header in extra.headers:
            more.add_column(header)
        for extra_row in extra.rows:
            more.add_row(*extra_row)
        console.print(more)
    for note in notes:
        console.print(note, markup=False, highlight=False)
    targets = Table(title=TARGETS_TITLE, caption=_small_run_caption(mode))
    for header in TARGET_HEADERS:
        targets.add_column(header)
    for line in target_cells(goals):
        targets.add_row(*line, style="red" if line[3] == "MISSED" else None)
    console.print(targets)


def _load(load: Any) -> str:
    return "?" if not load else "/".join(f"{x:.1f}" for x in load)


def _md(headers: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(line) + " |" for line in lines)]


def markdown(rows: list[dict[str, Any]], goals: list[dict[str, Any]], tables: Sequence[ExtraTable] = (),
             notes: Sequence[str] = ()) -> str:
    """The same tables in GitHub Markdown."""
    lines = [CAPTION, "", *_md(HEADERS, cells(rows))]
    for extra in tables:
        lines += ["", f"{extra.title}{f' ({extra.caption})' if extra.caption else ''}:", "",
                  *_md(extra.headers, extra.rows)]
    lines += [*(["", *notes] if notes else []), "", f"{TARGETS_TITLE}:", "",
              *_md(TARGET_HEADERS, target_cells(goals))]
    return "\n".join(lines) + "\n"


# -- the plot ------------------------------------------------------------------------


def colours(panels: Sequence[Panel]) -> dict[str, str]:
    """A colour per system across all panels: the fixed ones, then spares in order of first appearance."""
    out = {}
    spare = iter(c for c in SPARE_COLOURS if c not in COLOURS.values())
    for panel in panels:
        for system in panel.series:
            if system not in out:
                out[system] = COLOURS.get(system) or next(spare, "#999999")
    return out


def _plain_ticks(ax: Any, axis: str, values: Sequence[float], log: bool, *, at_values: bool = False) -> None:
    """Plain tick labels (1,000 / 10k / 0.5, never 3x10^0) and limits a little wider than ``values``.

    ``at_values``: tick exactly at the values (the sizes N of a run), when there are few.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

    which = ax.xaxis if axis == "x" else ax.yaxis
    set_limits = ax.set_xlim if axis == "x" else ax.set_ylim
    which.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_n(float(f"{x:.4g}"))))
    which.set_minor_formatter(NullFormatter())
    which.set_minor_locator(NullLocator())
    lo, hi = min(values), max(values)
    distinct = sorted(set(values))
    if log:
        if hi / lo < 1.2:
            lo, hi = lo / 1.1, hi * 1.1
        margin = max((hi / lo) ** 0.06, 1.05)
        lo_lim, hi_lim = lo / margin, hi * margin
        decades = math.log10(hi / lo)
        if at_values and len(distinct) <= 8:
            ticks = distinct
        elif decades < 1:
            ticks = [t for t in MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo / 1.5, hi) if t > 0]
        else:
            subs = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0)
            first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            ticks = [s * 10.0**e for e in range(first, last + 1) for s in subs]
        if not (at_values and len(distinct) <= 8):
            # widen to the ticks just outside the data when they are near, so each end is labelled
            lo_lim = min(lo_lim, max((t for t in ticks if lo / 1.5 <= t <= lo), default=lo_lim))
            hi_lim = max(hi_lim, min((t for t in ticks if hi <= t <= hi * 1.5), default=hi_lim))
    else:
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
        lo_lim, hi_lim = lo - pad, hi + pad
        if lo >= 0 and lo_lim < 0:
            lo_lim = 0.0
        nice = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10])
        ticks = distinct if at_values and len(distinct) <= 8 else list(nice.tick_values(lo, hi))
    set_limits(lo_lim, hi_lim)
    which.set_major_locator(FixedLocator([t for t in ticks if lo_lim <= t <= hi_lim] or [lo, hi]))


def plot(panels: Sequence[Panel], path: Path) -> None:
    """Every panel of every scenario in one PNG, one colour per system throughout, plain tick labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colour = colours(panels)
    cols = 1 if len(panels) <= 1 else 2 if len(panels) <= 4 else 3
    nrows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.9 * nrows + 1.0), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    if not panels:
        flat[0].set_visible(True)
        flat[0].text(0.5, 0.5, "no scenario ran a panel", ha="center", va="center")
        flat[0].set_axis_off()
    for ax, panel in zip(flat, panels, strict=False):
        _draw(ax, panel, colour)
    handles = [Line2D([], [], color=c, marker="o", linestyle="--" if s == "ideal" else "-", label=s)
               for s, c in colour.items()]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize="small",
                   frameon=False)
    legend_rows = math.ceil(len(handles) / 6) if handles else 0
    fig.tight_layout(rect=(0, 0.03 + 0.035 * legend_rows / max(nrows, 1) * 2, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw(ax: Any, panel: Panel, colour: dict[str, str]) -> None:
    ys = [y for points in panel.series.values() for _, y in points if y > 0 or not panel.log_y]
    categorical = any(isinstance(x, str) for points in panel.series.values() for x, _ in points)
    if categorical:
        cases: list[str] = []
        for points in panel.series.values():
            for x, _ in points:
                if str(x) not in cases:
                    cases.append(str(x))
        width = 0.8 / max(len(panel.series), 1)
        for i, (system, points) in enumerate(panel.series.items()):
            at = {str(x): y for x, y in points}
            xs = [c + (i - (len(panel.series) - 1) / 2) * width for c, case in enumerate(cases) if case in at]
            ax.bar(xs, [at[case] for case in cases if case in at], width=width, color=colour[system], label=system)
        ax.set_xticks(range(len(cases)))
        # long case names (the bridge's per-run costs) wrap rather than run into each other
        ax.set_xticklabels([textwrap.fill(case, 16) for case in cases], fontsize="small")
    else:
        xs_all: list[float] = []
        for system, points in panel.series.items():
            # by x alone, keeping the given order of equal x: a step line has two points at each step
            ordered = sorted(((float(x), y) for x, y in points), key=lambda point: point[0])
            xs_all += [x for x, _ in ordered]
            ax.plot([x for x, _ in ordered], [y for _, y in ordered], marker="o" if len(ordered) <= 40 else None,
                    color=colour[system], linestyle="--" if system in ("ideal", "provider limit") else "-",
                    label=system)
        if panel.log_x and xs_all and min(xs_all) > 0:
            ax.set_xscale("log")
        if xs_all:
            _plain_ticks(ax, "x", xs_all, panel.log_x and min(xs_all) > 0, at_values=True)
    if panel.reference is not None:
        ax.axhline(panel.reference, color="black", linestyle="--", linewidth=1)
        ys.append(panel.reference)
    log_y = panel.log_y and bool(ys) and min(ys) > 0
    if log_y:
        ax.set_yscale("log")
    if ys:
        _plain_ticks(ax, "y", ys, log_y)
    ax.set_title(panel.title, fontsize="medium")
    ax.set_xlabel(panel.x_label)
    ax.set_ylabel(panel.y_label)
    ax.grid(True, which="major", alpha=0.3)
