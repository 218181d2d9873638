"""``python -m benchmarks --smoke`` runs end to end and reports every scenario and system."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import workloads

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_smoke_reports_every_scenario_and_system(tmp_path: Path) -> None:
    """The tiny run writes JSON with a positive time and peak memory for every system of every scenario."""
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out), "--plot", str(plot)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    assert report["python"]["version"] and report["packages"]["trio"] and report["machine"]["cpu_count"]
    rows = report["results"]
    expected = {
        "trivial": set(workloads.TRIVIAL_SYSTEMS),
        "latency": {*workloads.LATENCY_SYSTEMS, "ideal"},
        "flow": set(workloads.FLOW_SYSTEMS),
    }
    for scenario, systems in expected.items():
        seen = {row["system"] for row in rows if row["scenario"] == scenario}
        assert seen == systems, scenario
    for row in rows:
        if row["scenario"] == "bridge" or row["system"] == "ideal":
            continue
        assert row["us_per_item"]["median"] > 0, row
        assert row["us_per_item"]["min"] <= row["us_per_item"]["median"] <= row["us_per_item"]["max"], row
        assert row["peak_mb"] > 0, row
        assert row["delta_mb"] >= 0, row
    bridge = [row for row in rows if row["scenario"] == "bridge"]
    assert bridge, "the bridge scenario is reported, measured or not available"
    if importlib.util.find_spec("benchmarks.bridge") is None:
        assert all("not available" in row["status"] for row in bridge), bridge
    else:
        assert all(row["status"] == "ok" and row["us_per_item"]["median"] > 0 for row in bridge), bridge
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "targets" in done.stdout
