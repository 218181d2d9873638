"""The ``durable`` benchmark scenario (benchmarks/durable.py): it runs on its own and judges what it measured.

No speed is asserted here (figures come from the benchmark run itself).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import durable
from benchmarks.core import Figure, Group, Result
from benchmarks.scenarios import registry

ROOT = Path(__file__).resolve().parent.parent


def test_durable_benchmark_smoke_runs_standalone(tmp_path: Path) -> None:
    """``python -m benchmarks.durable --smoke`` runs its three groups (the resume one kills a real child)
    and reports a row per system and its four targets."""
    out = tmp_path / "durable.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.durable", "--smoke", "--no-memory", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    rows = {(row["variant"], row["system"]): row for row in report["results"]}
    assert set(rows) == {
        ("trivial", "sqlite store"), ("trivial", "no store"), ("latency", "sqlite store"), ("latency", "no store"),
        ("resume", "uninterrupted"), ("resume", "resume"),
    }
    assert all(row["status"] == "ok" and row["runs_s"] for row in rows.values())
    resumed = rows[("resume", "resume")]["extra"]
    assert resumed["ran"] >= 2000 * (1 - durable.KILL_AT) and resumed["ran_twice"] <= 2000 * durable.KILL_AT
    assert len(report["targets"]) == 4 and "durable resume" in done.stdout


def test_durable_scenario_is_registered() -> None:
    """The registry finds the scenario (benchmarks/scenarios/durable.py re-exports it)."""
    assert registry().scenarios["durable"] is durable.SCENARIO


def test_durable_targets_read_the_figures() -> None:
    """Speed with a store is the time without ÷ with; the resume target is what follows the skip ÷ 0.1 x full."""
    trivial = Group("durable", 100, 64, (durable.STORE, durable.PLAIN), variant="trivial")
    latency = Group("durable", 10, 10, (durable.STORE, durable.PLAIN), variant="latency")
    resume = Group("durable", 100, 64, (durable.RESUME, durable.UNINTERRUPTED), variant="resume")
    results = [
        Result(trivial, {durable.STORE: Figure(runs=[4.0]), durable.PLAIN: Figure(runs=[1.0])}),
        Result(latency, {durable.STORE: Figure(runs=[1.02]), durable.PLAIN: Figure(runs=[1.0])}),
        Result(resume, {
            durable.UNINTERRUPTED: Figure(runs=[10.0]),
            durable.RESUME: Figure(runs=[3.0], extra={"load_s": 1.0, "skip_s": 2.5, "ran": 15.0, "ran_twice": 5.0}),
        }),
    ]
    got = {t.name: (t.measured, t.met) for t in durable.targets(results)}
    assert got == {
        "durable: trivial items, speed with a store vs without": (0.25, False),
        "durable: 50 ms items, time with a store vs without": (1.02, True),
        "durable: resume after loading the done set, vs 0.1 x the uninterrupted run": (0.5, True),
        "durable: items run twice after the kill": (5.0, True),
    }
    (table,) = durable.tables(results)
    assert table.rows[2][1] == "2.50" and "85 results" in table.rows[2][2]
