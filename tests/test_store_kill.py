"""Durable runs killed for real: a child process (tests/durable_child.py) is stopped mid-run, then run again.

Real processes are the point here: SIGKILL leaves no ``finally`` and no flush,
so what survives is what the store had committed.  Each test reads the child's
exec log (``start KEY`` / ``end KEY``, one unbuffered write each) and the store
after the kill, and checks the guarantee: the resumed run's results and
``shared`` equal an uninterrupted run's, every item ran at least once, no
recorded item ran again, and the items that ran twice were in flight or in the
last uncommitted window when the process died.  Run with ``-rP`` to see the
re-run counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import _durable

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("durable_child.py")
TIMEOUT = 120  # seconds a child may take, at most (they take about one)

SIZES = {"batch": (10_000, 50), "flow": (2_000, 20), "pbflow": (300, 20)}  # items and cap of each kind
#: exec calls of an uninterrupted run of each kind (flow: load, the batch, 3 reviews + 1, 3 revisions, report)
CALLS = {"batch": 10_000, "flow": 2_000 + 9, "pbflow": 2 * 300}


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run_child(spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), json.dumps(spec)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def spec_for(kind: str, folder: Path, **extra: Any) -> dict[str, Any]:
    n, cap = SIZES[kind]
    return {
        "kind": kind,
        "db": str(folder / "runs.db"),
        "run_id": "r",
        "log": str(folder / "exec.log"),
        "out": str(folder / "out.json"),
        "n": n,
        "cap": cap,
        **extra,
    }


def read_log(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def committed(db: str) -> set[str]:
    """The exec calls whose results the store holds, named as the exec log names them."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        found = conn.execute("SELECT place, key FROM results JOIN nodes USING (node_id) WHERE status = 0").fetchall()
    names = set()
    for place, key in found:
        node, value = place.rsplit("/", 1)[-1].split("_")[0], json.loads(key)
        if node == "Summarize":
            names.add(value)
        elif node == "Load":
            names.add("load")
        elif node == "Review":
            names.add(f"review-{value[0]}")
        elif node in ("Revise", "Report", "Fetch", "Condense"):
            names.add(f"{node.lower()}-{value}")
    return names


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What an uninterrupted run of each kind writes (results and shared, as JSON)."""
    outputs = {}
    for kind in SIZES:
        folder = tmp_path_factory.mktemp(f"reference-{kind}")
        done = run_child(spec_for(kind, folder))
        assert done.returncode == 0, done.stderr
        outputs[kind] = (folder / "out.json").read_text()
    return outputs


def kill_and_resume(kind: str, reference: str, **first: Any) -> dict[str, Any]:
    """Run ``kind`` with ``first`` (a kill, an interrupt), then run it again; check the guarantee; return counts."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        spec = spec_for(kind, folder)
        killed = run_child({**spec, **first})
        log1 = read_log(Path(spec["log"]))
        started1 = {key for what, key in log1 if what == "start"}
        ended1 = {key for what, key in log1 if what == "end"}
        kept = committed(spec["db"]) if Path(spec["db"]).exists() else set()
        Path(spec["log"]).unlink(missing_ok=True)
        resumed = run_child(spec)
        assert resumed.returncode == 0, resumed.stderr
        log2 = read_log(Path(spec["log"]))
        started2 = [key for what, key in log2 if what == "start"]
        assert (folder / "out.json").read_text() == reference  # results in order, and shared, as uninterrupted
        every = {key for what, key in read_log_reference(kind)}
        assert started1 | set(started2) >= every  # every item ran at least once
        assert len(started2) == len(set(started2))  # and at most once in the resumed run
        assert not kept & set(started2)  # no recorded item ran again
        in_flight = started1 - ended1
        window = ended1 - kept  # finished, not committed when the process died
        twice = started1 & set(started2)
        assert twice <= in_flight | window
        return {
            "exit": killed.returncode,
            "ran": len(started1),
            "in_flight": len(in_flight),
            "uncommitted": len(window),
            "twice": len(twice),
            "stderr": killed.stderr,
        }


def read_log_reference(kind: str) -> list[tuple[str, str]]:
    """The exec keys of an uninterrupted run (computed, so no log is needed)."""
    n, _ = SIZES[kind]
    if kind == "batch":
        keys = [f"doc-{i}" for i in range(n)]
    elif kind == "flow":
        keys = ["load", *(f"doc-{i}" for i in range(n)), *(f"review-{r}" for r in range(4)),
                *(f"revise-{r}" for r in range(3)), f"report-{n}"]
    else:
        keys = [f"{step}-doc-{i}" for i in range(n) for step in ("fetch", "condense")]
    return [("start", key) for key in keys]


def report(label: str, counts: dict[str, Any]) -> None:
    print(
        f"{label}: exit {counts['exit']}, {counts['ran']} exec calls before it, {counts['in_flight']} in flight, "
        f"{counts['uncommitted']} finished but uncommitted, {counts['twice']} ran twice"
    )


class TestKillAndResume:
    @settings(max_examples=4, deadline=None)
    @given(kill_at=st.integers(1, CALLS["batch"]))
    def test_batch_of_10000_killed_with_SIGKILL_resumes_with_only_what_was_not_recorded(
        self, references: dict[str, str], kill_at: int
    ) -> None:
        """SIGKILL at the kill_at-th exec call of 10,000 (cap 50): the resumed run equals an uninterrupted one;
        items run twice were in flight or uncommitted, at most the cap plus one window of the writer."""
        counts = kill_and_resume("batch", references["batch"], kill_at=kill_at)
        assert counts["exit"] == -signal.SIGKILL
        assert counts["in_flight"] <= SIZES["batch"][1]
        assert counts["uncommitted"] <= _durable.FLUSH_ROWS + SIZES["batch"][1]  # one window of the writer
        report(f"batch killed at call {kill_at}", counts)

    @settings(max_examples=4, deadline=None)
    @given(kill_at=st.integers(1, CALLS["flow"]) | st.sampled_from([1, 2_002, 2_003, 2_005, 2_008, 2_009]))
    def test_flow_killed_between_steps_resumes_at_the_step_it_was_in(
        self, references: dict[str, str], kill_at: int
    ) -> None:
        """SIGKILL in a flow (load, a batch of 2,000, a review loop, a report), often at a step's exec:
        shared is restored to the last finished step, the flow goes on from there and ends as an uninterrupted run."""
        counts = kill_and_resume("flow", references["flow"], kill_at=kill_at)
        assert counts["exit"] == -signal.SIGKILL
        report(f"flow killed at call {kill_at}", counts)

    @settings(max_examples=3, deadline=None)
    @given(kill_at=st.integers(1, CALLS["pbflow"]))
    def test_parallel_batch_flow_killed_resumes_its_sub_flows(self, references: dict[str, str], kill_at: int) -> None:
        """SIGKILL in a ParallelBatchFlow of 300 sub-flows (cap 20): finished sub-flows are not run again,
        the others go on from their last finished step, shared ends as an uninterrupted run's."""
        counts = kill_and_resume("pbflow", references["pbflow"], kill_at=kill_at)
        assert counts["exit"] == -signal.SIGKILL
        report(f"parallel batch flow killed at call {kill_at}", counts)

    def test_ctrl_c_flushes_every_result_so_only_the_items_in_flight_run_again(
        self, references: dict[str, str], tmp_path: Path
    ) -> None:
        """A real SIGINT from outside, once 3,000 calls started: KeyboardInterrupt, every finished result committed
        (nothing uncommitted), and the resumed run reruns only the items that were in flight."""
        spec = spec_for("batch", tmp_path, latency=0.002, flush_seconds=600)  # only the final flush commits
        log = Path(spec["log"])
        child = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(spec)], cwd=ROOT, env=child_env(), stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + TIMEOUT
        while sum(1 for what, _ in read_log(log) if what == "start") < 3_000:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)  # the child runs on its own: wait for its log to reach the mark
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=TIMEOUT)
        assert child.returncode != 0 and "KeyboardInterrupt" in stderr
        log1 = read_log(log)
        started1 = {key for what, key in log1 if what == "start"}
        ended1 = {key for what, key in log1 if what == "end"}
        kept = committed(spec["db"])
        # Everything recorded was flushed.  KeyboardInterrupt lands wherever the Trio thread is: at most one
        # item can have logged its end and been interrupted before its result was recorded.
        assert kept <= ended1 and len(ended1 - kept) <= 1
        log.unlink()
        assert run_child(spec).returncode == 0
        started2 = {key for what, key in read_log(log) if what == "start"}
        assert (tmp_path / "out.json").read_text() == references["batch"]
        assert started2 == {f"doc-{i}" for i in range(SIZES["batch"][0])} - kept
        twice = started1 & started2
        assert twice == started1 - kept and len(twice) <= SIZES["batch"][1]
        print(f"Ctrl-C after {len(started1)} calls: {len(twice)} ran twice (in flight), 0 uncommitted")

    def test_failure_after_retries_then_resume_runs_only_the_failed_and_unfinished_items(
        self, references: dict[str, str], tmp_path: Path
    ) -> None:
        """doc-7 fails both its attempts and the batch stops (exit 4); run again (the API is back), only doc-7
        and the items not finished run, and the results equal an uninterrupted run's."""
        spec = spec_for("batch", tmp_path)
        failing = run_child({**spec, "fail": ["doc-7"], "max_retries": 2, "flush_seconds": 600})
        assert failing.returncode == 4 and "ConnectionError" in failing.stdout
        log1 = read_log(Path(spec["log"]))
        ended1 = {key for what, key in log1 if what == "end"}
        assert committed(spec["db"]) == ended1
        with contextlib.closing(sqlite3.connect(spec["db"])) as conn, conn:
            assert conn.execute("SELECT key, value FROM results WHERE status = 1").fetchall() == [
                ('"doc-7"', "ConnectionError: the fake LLM failed on doc-7")
            ]
        Path(spec["log"]).unlink()
        assert run_child(spec).returncode == 0
        started2 = {key for what, key in read_log(Path(spec["log"])) if what == "start"}
        assert "doc-7" in started2 and started2 == {f"doc-{i}" for i in range(SIZES["batch"][0])} - ended1
        assert (tmp_path / "out.json").read_text() == references["batch"]

    def test_second_process_on_one_run_id_gets_the_lease_error_and_nothing_runs_twice(self, tmp_path: Path) -> None:
        """While a first process runs (held at its first call), a second one on the same run_id exits with the
        lease error before any call; the first then finishes, and every item ran exactly once."""
        spec = {**spec_for("batch", tmp_path), "n": 200, "block_at": 1, "release": str(tmp_path / "go")}
        first = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(spec)], cwd=ROOT, env=child_env(), stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while not read_log(Path(spec["log"])):
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)  # until the first process made its first call (it holds the lease)
            second = run_child({**spec, "block_at": None})
            assert second.returncode == 3, second.stderr
            assert "run 'r' is being run by another process" in second.stdout
            assert f"{os.uname().nodename}:{first.pid}:" in second.stdout  # it names the holder
            (tmp_path / "go").touch()
            first.communicate(timeout=TIMEOUT)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert first.returncode == 0
        starts = [key for what, key in read_log(Path(spec["log"])) if what == "start"]
        assert sorted(starts) == sorted(f"doc-{i}" for i in range(200))  # each once, all by the first process
