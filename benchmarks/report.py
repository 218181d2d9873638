"""The table (rich and Markdown) and the plot (matplotlib) of a run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SCENARIO_TITLES = {
    "trivial": "1 trivial",
    "latency": "2 latency",
    "flow": "3 batch flow",
    "bridge": "4 bridge",
}
TARGET_HEADERS = ("target", "limit", "measured (wall)", "", "same on CPU time", "where")
HEADERS = ("scenario", "N", "cap", "system", "µs/item", "min-max", "peak MB", "Δ MB", "time ratio", "peak ratio")


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
        key = (row["scenario"], row["n"], row["cap"])
        first = key != previous
        previous = key
        head = [SCENARIO_TITLES[row["scenario"]], f"{row['n']:,}", "none" if row["cap"] is None else str(row["cap"])]
        if not first:
            head = ["", "", ""]
        if row["status"] != "ok":
            out.append([*head, row["status"], *[""] * (len(HEADERS) - 4)])
            continue
        us = row["us_per_item"]
        ratio, peak_ratio = row.get("ratio_time"), row.get("ratio_peak_mb")
        ratio_text = "" if ratio is None else f"{ratio:.2f}"
        peak_text = "" if peak_ratio is None else f"{peak_ratio:.2f}"
        spread = "" if row["note"] == "computed" else f"{_num(us['min'], 2)}-{_num(us['max'], 2)}"
        out.append([
            *head,
            row["system"],
            _num(us["median"], 2),
            spread,
            _num(row["peak_mb"]),
            _num(row["delta_mb"]),
            ratio_text,
            peak_text,
        ])
    return out


def target_cells(goals: Iterable[dict[str, Any]]) -> list[list[str]]:
    out = []
    for goal in goals:
        met = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        value = "-" if goal["measured"] is None else f"{goal['measured']:.2f}"
        cpu = "" if goal.get("cpu_ratio") is None else f"{goal['cpu_ratio']:.2f}"
        out.append([goal["target"], goal["limit"], value, met, cpu, goal["where"]])
    return out


def print_table(console: Console, rows: list[dict[str, Any]], goals: list[dict[str, Any]], *, mode: str,
                info: dict[str, Any]) -> None:
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
    caption = None
    if mode != "full":
        caption = (
            f"a {mode} run: the targets are set at the full run's sizes (1,000,000 items for the "
            "PocketFlow and pool targets); at these smaller sizes the process baseline weighs on memory"
        )
    targets = Table(title="targets (DESIGN.md performance contract)", caption=caption)
    for header in TARGET_HEADERS:
        targets.add_column(header)
    for line in target_cells(goals):
        targets.add_row(*line, style="red" if line[3] == "MISSED" else None)
    console.print(targets)


CAPTION = (
    "µs/item: median (and min-max) of the timed runs, the warm-up discarded.  peak MB: the peak RSS of a fresh "
    "process that ran the configuration once; Δ MB: that peak minus the process's RSS before the run.  "
    "ratios: trioflow's figure ÷ this system's (below 1: trioflow is faster / leaner)."
)


def _load(load: Any) -> str:
    return "?" if not load else "/".join(f"{x:.1f}" for x in load)


def markdown(rows: list[dict[str, Any]], goals: list[dict[str, Any]]) -> str:
    """The same tables in GitHub Markdown."""
    lines = [CAPTION, "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(line) + " |" for line in cells(rows)]
    lines += ["", "| " + " | ".join(TARGET_HEADERS) + " |", "|" + "---|" * len(TARGET_HEADERS)]
    lines += ["| " + " | ".join(line) + " |" for line in target_cells(goals)]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """µs/item and peak MB against N, one line per system, log axes; scenario 1 at cap 64 and no cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = [64, None]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), squeeze=False)
    for col, cap in enumerate(caps):
        series: dict[str, list[tuple[int, float, float | None]]] = {}
        for row in rows:
            if row["scenario"] == "trivial" and row["cap"] == cap and row["status"] == "ok":
                series.setdefault(row["system"], []).append((row["n"], row["us_per_item"]["median"], row["peak_mb"]))
        for system, points in sorted(series.items()):
            points.sort()
            ns = [p[0] for p in points]
            axes[0][col].plot(ns, [p[1] for p in points], marker="o", label=system)
            mem = [(p[0], p[2]) for p in points if p[2] is not None]
            if mem:
                axes[1][col].plot([m[0] for m in mem], [m[1] for m in mem], marker="o", label=system)
        title = f"trivial items, cap {cap}" if cap else "trivial items, no cap"
        axes[0][col].set_title(f"{title}: µs per item (median)")
        axes[1][col].set_title(f"{title}: peak MB of a fresh process")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N items")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
