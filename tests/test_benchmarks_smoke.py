"""``python -m benchmarks``: the scenario registry, every registered scenario's smoke plan, the report.

No figure is asserted here (speed claims come from the benchmark run itself): these
tests show that every scenario plans, runs, reports and draws at tiny sizes, and that
the command line, the progress lines and the PNG work end to end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import benchmarks.bridge
from benchmarks import core, report, workloads
from benchmarks.scenarios import discover, registry
from benchmarks.scenarios import trivial as trivial_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = list(registry().scenarios.values())
CORE_SCENARIOS = ("trivial", "latency", "flow", "bridge")


class Steps:
    """A progress reporter that records what a run said and how far it advanced."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done = 0

    def status(self, text: str) -> None:
        self.lines.append(text)

    def advance(self, steps: int = 1) -> None:
        self.done += steps


def run_in_process(scenario: core.Scenario, mode: core.Mode = "smoke") -> tuple[list[core.Result], Steps]:
    """Every group of ``scenario``'s plan, run in this process (even an isolated one's) without memory children."""
    steps = Steps()
    results = [scenario.run_group(group, core.Context(steps, memory=False), here=True) for group in scenario.plan(mode)]
    return results, steps


def readme_example() -> str:
    """The complete example scenario of benchmarks/README.md."""
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "benchmarks/README.md has one python block, the example"
    return str(blocks[0])


def make_package(root: Path, name: str, modules: dict[str, str]) -> str:
    """A package ``name`` under ``root`` holding ``modules`` (module name to source)."""
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, source in modules.items():
        (package / f"{module}.py").write_text(textwrap.dedent(source))
    return name


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One ``python -m benchmarks --smoke`` with every output, its stdout, stderr and JSON."""
    tmp = tmp_path_factory.mktemp("smoke")
    paths = {"json": tmp / "bench.json", "plot": tmp / "bench.png", "markdown": tmp / "bench.md"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", *(f"--{k}={v}" for k, v in paths.items())],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    yield {"done": done, "paths": paths,
           "report": json.loads(paths["json"].read_text()) if paths["json"].exists() else None}


class TestRegistry:
    def test_registry_holds_every_scenario_module(self) -> None:
        """Every module of benchmarks/scenarios registers one scenario; none is broken; names are unique."""
        found = registry()
        modules = {p.stem for p in (ROOT / "benchmarks" / "scenarios").glob("*.py") if not p.stem.startswith("_")}
        assert found.broken == {}
        assert {m.rsplit(".", 1)[1] for m in found.modules.values()} == modules
        assert set(CORE_SCENARIOS) <= set(found.scenarios)
        orders = [s.order for s in found.scenarios.values()]
        assert orders == sorted(orders)

    def test_discover_reports_broken_modules_and_keeps_the_others(self, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """A missing extra is "not available"; a bad import of ours or a missing SCENARIO "failed"."""
        monkeypatch.syspath_prepend(str(tmp_path))
        package = make_package(tmp_path, "fake_scenarios_a", {
            "echo": readme_example(),
            "needs_extra": "import a_package_that_is_not_installed_xyz\n",
            "typo": "import benchmarks.no_such_module\n",
            "empty": "X = 1\n",
            "_private": "raise RuntimeError('skipped: a leading underscore')\n",
        })
        found = discover(package)
        assert list(found.scenarios) == ["echo"]
        assert found.modules == {"echo": "fake_scenarios_a.echo"}
        assert found.broken["needs_extra"].startswith("not available:")
        assert found.broken["typo"].startswith("failed:")
        assert found.broken["empty"].startswith("failed:") and "SCENARIO" in found.broken["empty"]
        assert "_private" not in found.broken

    def test_discover_refuses_two_modules_with_one_name(self, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """Two modules that register the same name both fail; neither is run."""
        monkeypatch.syspath_prepend(str(tmp_path))
        found = discover(make_package(tmp_path, "fake_scenarios_c", {
            "echo": readme_example(), "echo_copy": "from fake_scenarios_c.echo import SCENARIO\n"}))
        assert found.scenarios == {}
        assert set(found.broken) == {"echo", "echo_copy"}
        assert all("both register 'echo'" in why for why in found.broken.values())

    def test_readme_example_is_a_working_scenario(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The example module of benchmarks/README.md registers, runs its smoke plan and gives its target and panel."""
        monkeypatch.syspath_prepend(str(tmp_path))
        scenario = discover(make_package(tmp_path, "fake_scenarios_b", {"echo": readme_example()})).scenarios["echo"]
        results, steps = run_in_process(scenario)
        assert [r.status for r in results] == ["ok"]
        assert set(results[0].figures) == {"trioflow", "loop"}
        assert steps.done == scenario.count_steps(results[0].group, False)
        (target,) = scenario.targets(results)
        assert target.measured is not None and target.met is not None
        assert [p.title for p in scenario.panels(results)] == ["echo: µs per item"]

    def test_Scenario_refuses_a_bad_name_and_no_way_to_run(self) -> None:
        """A name with capitals or spaces, or neither once nor run, is a ValueError at definition."""
        with pytest.raises(ValueError, match="lowercase"):
            core.Scenario(name="Dask scale", title="x", about="x", plan=lambda mode: [], once=lambda g, s: (0, 0))
        with pytest.raises(ValueError, match=r"once= .* or run="):
            core.Scenario(name="x", title="x", about="x", plan=lambda mode: [])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
class TestEveryScenario:
    def test_Scenario_plan_in_every_mode(self, scenario: core.Scenario) -> None:
        """Each mode plans groups of this scenario only, each surviving the JSON trip to the memory child."""
        for mode in core.MODES:
            groups = scenario.plan(mode)
            assert groups, mode
            for group in groups:
                assert group.scenario == scenario.name
                assert core.Group.from_json(json.loads(json.dumps(group.to_json()))) == group
        assert all(g.repeats <= 2 for g in scenario.plan("smoke"))

    def test_Scenario_smoke_path(self, scenario: core.Scenario) -> None:
        """The smoke groups run (ok, or "not available"), advance their steps, and feed targets, tables and panels."""
        results, steps = run_in_process(scenario)
        assert steps.done == sum(scenario.count_steps(r.group, False) for r in results)
        for result in results:
            assert result.status == "ok" or result.status.startswith("not available"), result.status
            if result.status == "ok":
                assert set(result.group.systems) <= set(result.figures)
                for figure in result.figures.values():
                    assert figure.runs and all(t > 0 for t in figure.runs)
        scenario.targets(results)
        scenario.tables(results)
        scenario.notes(results)
        for panel in scenario.panels(results):
            assert panel.series and all(panel.series.values()), panel.title


class TestBridgeCosts:
    def costs(self, n: int) -> dict[str, float]:
        return {"adapters.pocketflow AsyncFlow.run_async": 0.0003, "pocketflow AsyncFlow.run_async": 0.00002}

    def test_bridge_shows_run_pocketflow_costs_when_present(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With run_pocketflow_costs, the bridge plans its group, tables it and checks the run_async target."""
        monkeypatch.setattr(benchmarks.bridge, "run_pocketflow_costs", self.costs, raising=False)
        scenario = registry().scenarios["bridge"]
        results = [scenario.run_group(g, core.Context(Steps(), memory=False), here=True)
                   for g in scenario.plan("smoke") if g.variant == "pocketflow"]
        assert [r.status for r in results] == ["ok"]
        (table,) = scenario.tables(results)
        assert [row[:2] for row in table.rows] == [["adapters.pocketflow AsyncFlow.run_async", "0.300"],
                                                   ["pocketflow AsyncFlow.run_async", "0.020"]]
        (target,) = [t for t in scenario.targets(results) if "run_async" in t.name]
        assert target.met is True and target.measured == pytest.approx(0.3)

    def test_bridge_runs_an_async_run_pocketflow_costs_under_asyncio(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An async def run_pocketflow_costs is awaited on a plain asyncio loop."""
        import asyncio

        async def costs(n: int) -> dict[str, float]:
            asyncio.get_running_loop()
            return self.costs(n)

        monkeypatch.setattr(benchmarks.bridge, "run_pocketflow_costs", costs, raising=False)
        group = next(g for g in registry().scenarios["bridge"].plan("smoke") if g.variant == "pocketflow")
        result = registry().scenarios["bridge"].run_group(group, core.Context(Steps(), memory=False), here=True)
        assert result.status == "ok" and len(result.figures) == 2

    def test_bridge_without_run_pocketflow_costs_leaves_it_out(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without run_pocketflow_costs, its group has no rows, no table, and its target says "not measured"."""
        monkeypatch.delattr(benchmarks.bridge, "run_pocketflow_costs", raising=False)
        scenario = registry().scenarios["bridge"]
        results = [scenario.run_group(g, core.Context(Steps(), memory=False), here=True)
                   for g in scenario.plan("smoke") if g.variant == "pocketflow"]
        assert [(r.status, r.figures) for r in results] == [("ok", {})]
        assert scenario.tables(results) == []
        (target,) = [t for t in scenario.targets(results) if "run_async" in t.name]
        assert target.met is None and "run_pocketflow_costs" in target.where

    def test_bridge_runs_in_a_child_process(self) -> None:
        """The bridge is isolated: the runner's process never imports trio_asyncio (it slows asyncio peers)."""
        code = ("import sys; from benchmarks import runner; from benchmarks.scenarios import registry; "
                "s = registry().scenarios['bridge']; assert s.isolated; "
                "runner.main(['--smoke', '--scenario', 'bridge', '--no-memory']); "
                "assert 'trio_asyncio' not in sys.modules, 'trio_asyncio imported by the runner'")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert "trioflow-aio" in done.stdout


class TestTrivialTargets:
    def result(self, **us_per_item: float) -> core.Result:
        n = 1_000_000
        group = core.Group("trivial", n, 64, tuple(us_per_item), 1)
        figures = {s: core.Figure(runs=[us * n / 1e6], peak_mb=100.0 if s == "pocketflow" else 5.0, delta_mb=1.0)
                   for s, us in us_per_item.items()}
        return core.Result(group, figures)

    def test_trivial_targets_are_relative_to_the_leanest_pool(self) -> None:
        """Within 1.1x of trio-lean, and PocketFlow ÷ trioflow at least 0.9 x PocketFlow ÷ trio-lean."""
        slow = trivial_scenario.targets([self.result(trioflow=2.77, pocketflow=19.04, **{"trio-lean": 2.10})])
        met = {t.name: t.met for t in slow}
        assert met["time vs the leanest Trio pool (the floor)"] is False
        assert met["faster than PocketFlow"] is False
        fast = trivial_scenario.targets([self.result(trioflow=2.2, pocketflow=19.04, **{"trio-lean": 2.10})])
        by_name = {t.name: t for t in fast}
        assert by_name["time vs the leanest Trio pool (the floor)"].met is True
        assert by_name["faster than PocketFlow"].met is True
        assert by_name["faster than PocketFlow"].limit == ">= 0.9 x the floor's 9.07x = 8.16x"
        assert by_name["peak memory vs PocketFlow (whole process)"].measured == pytest.approx(0.05)

    def test_trio_lean_returns_results_in_input_order(self) -> None:
        """The floor collects every item, in input order, whatever the cap."""
        import trio

        for cap in (1, 3, 64):
            assert trio.run(workloads.trio_lean, 100, cap, 0.0) == list(range(100))


class TestReport:
    def test_colours_one_per_system_across_panels(self) -> None:
        """A system has the same colour in every panel, and no two systems share one."""
        panels = [core.Panel("a", {"trioflow": [(1, 1.0)], "new-a": [(1, 2.0)]}),
                  core.Panel("b", {"new-b": [("x", 1.0)], "trioflow": [("x", 1.0)], "new-a": [("x", 3.0)]})]
        colour = report.colours(panels)
        assert colour["trioflow"] == report.COLOURS["trioflow"]
        assert len(set(colour.values())) == len(colour) == 3

    def test_plot_tick_labels_are_plain_numbers(self) -> None:
        """Ticks read 1,000 / 10k / 1M / 0.5, never powers of ten, on log, narrow and categorical axes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [
            core.Panel("wide", {"a": [(1000, 3.0), (10_000, 2.5), (1_000_000, 2.9)]}),
            core.Panel("narrow", {"a": [(200, 3.1)], "b": [(200, 3.4)]}),
            core.Panel("bars", {"a": [("cap 10", 1.03)], "b": [("cap 10", 1.07)]}, log_y=False, reference=1.0),
        ]
        fig, axes = plt.subplots(1, len(panels))
        try:
            for ax, panel in zip(axes, panels, strict=True):
                report._draw(ax, panel, report.colours(panels))
            fig.canvas.draw()
            labels = {panel.title: ([t.get_text() for t in ax.get_xticklabels()],
                                    [t.get_text() for t in ax.get_yticklabels()])
                      for ax, panel in zip(axes, panels, strict=True)}
        finally:
            plt.close(fig)
        assert labels["wide"][0] == ["1,000", "10k", "1M"]
        for xs, ys in labels.values():
            for text in xs + ys:
                assert re.fullmatch(r"[\d,.]+[kM]?|cap 10", text), (text, labels)
            assert len(ys) >= 2, labels

    def test_fmt_n(self) -> None:
        """Counts print as 1,000, 10k, 100k, 1M; small numbers as themselves."""
        assert [core.fmt_n(x) for x in (0.5, 3, 150, 1000, 10_000, 100_000, 1_000_000, 2_500_000)] == [
            "0.5", "3", "150", "1,000", "10k", "100k", "1M", "2.5M"]


class TestCommandLine:
    def test_smoke_run_reports_every_registered_scenario(self, smoke: dict[str, Any]) -> None:
        """The tiny run exits 0 and writes JSON with ok rows (positive time and memory) for every scenario."""
        done = smoke["done"]
        assert done.returncode == 0, done.stderr
        out = smoke["report"]
        assert out["mode"] == "smoke" and out["errors"] == []
        assert out["python"]["version"] and out["packages"]["trio"] and out["machine"]["cpu_count"]
        assert set(out["scenarios"]) == set(registry().scenarios)
        rows = out["results"]
        for name in registry().scenarios:
            mine = [row for row in rows if row["scenario"] == name]
            assert mine, name
            assert all(row["status"] == "ok" or row["status"].startswith("not available") for row in mine), mine
        expected = {"trivial": {*workloads.TRIVIAL_SYSTEMS},
                    "latency": {*workloads.LATENCY_SYSTEMS, "ideal"},
                    "flow": set(workloads.FLOW_SYSTEMS),
                    "bridge": {"trioflow-aio", "aio_as_trio"}}
        for scenario, systems in expected.items():
            assert {row["system"] for row in rows if row["scenario"] == scenario and not row["variant"]} == systems
        for row in rows:
            if row["status"] != "ok" or row["note"] == "computed" or row["variant"]:
                continue
            assert 0 < row["us_per_item"]["min"] <= row["us_per_item"]["median"] <= row["us_per_item"]["max"], row
            assert row["peak_mb"] > 0 and row["delta_mb"] >= 0, row

    def test_smoke_run_writes_tables_and_plot(self, smoke: dict[str, Any]) -> None:
        """stdout has the table and the targets named after README.md's contract; the PNG and Markdown exist."""
        done, paths = smoke["done"], smoke["paths"]
        assert "targets (the performance contract in README.md)" in done.stdout
        assert "DESIGN" not in done.stdout + paths["markdown"].read_text()
        assert paths["plot"].read_bytes().startswith(b"\x89PNG")
        assert "| scenario | N | cap | system |" in paths["markdown"].read_text()

    def test_smoke_run_prints_progress_lines_off_a_terminal(self, smoke: dict[str, Any]) -> None:
        """With stderr piped, each step is a plain line "[done/total h:mm:ss] what", no bar escape codes."""
        err = smoke["done"].stderr
        lines = [line for line in err.splitlines() if line.startswith("[")]
        assert "\x1b[" not in err
        assert all(re.match(r"\[\d+/\d+ \d+:\d\d:\d\d\] ", line) for line in lines), lines
        for scenario in registry().scenarios.values():
            for group in scenario.plan("smoke"):
                assert any(group.label in line for line in lines), group.label
        assert re.search(r"\] done in \d+ s$", lines[-1]), lines[-1]

    def test_scenario_flag_runs_one_scenario_alone(self, tmp_path: Path) -> None:
        """--scenario NAME runs that scenario only; --list names every registered one."""
        out = tmp_path / "flow.json"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--smoke", "--scenario", "flow", "--no-memory", "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
        assert {row["scenario"] for row in json.loads(out.read_text())["results"]} == {"flow"}
        listed = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, check=True).stdout
        assert [line.split()[0] for line in listed.splitlines()] == list(registry().scenarios)
