"""The ``flaky`` scenario's own logic: the API's answers, the ideal, the perfect pool, the smoke run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import flaky
from benchmarks.localapi import flaky_plan, flaky_responder, flaky_schedule, flaky_work

ROOT = Path(__file__).resolve().parent.parent


class TestFlakyAPI:
    def test_flaky_plan_is_the_same_for_every_client(self) -> None:
        """An (item, attempt) always gets the same answer; 10 % 429 and 3 % 500 over many draws."""
        draws = [flaky_plan(0, item, attempt) for item in range(2000) for attempt in range(2)]
        assert draws == [flaky_plan(0, item, attempt) for item in range(2000) for attempt in range(2)]
        statuses = [status for status, _ in draws]
        assert 0.085 < statuses.count(429) / len(draws) < 0.115
        assert 0.02 < statuses.count(500) / len(draws) < 0.04
        assert all(0.02 <= latency <= 0.2 for _, latency in draws)

    def test_flaky_responder_counts_attempts_per_path(self) -> None:
        """Two clients under different prefixes meet the same sequence of answers for an item."""
        respond = flaky_responder(0, retry_after=1)
        item = next(i for i in range(100) if flaky_plan(0, i, 0)[0] == 429)
        for prefix in ("/a", "/b"):
            first = respond(f"{prefix}/item/{item}", 0.0)
            assert first.status == 429 and ("retry-after", "1") in first.headers
            assert respond(f"{prefix}/item/{item}", 1.0).status == flaky_plan(0, item, 1)[0]

    def test_perfect_pool_is_no_faster_than_the_ideal(self) -> None:
        """The zero-overhead pool's makespan is at least the ideal (all slots busy) and shrinks with
        a shorter Retry-After."""
        busy, attempts = flaky_work(0, 300, flaky.MAX_ATTEMPTS)
        assert attempts > 300
        ideal = busy / flaky.CAP
        slow = flaky_schedule(0, 300, flaky.CAP, flaky.MAX_ATTEMPTS, flaky.WAIT, flaky.BACKOFF, 1)
        fast = flaky_schedule(0, 300, flaky.CAP, flaky.MAX_ATTEMPTS, flaky.WAIT, flaky.BACKOFF, 0)
        assert ideal <= fast <= slow

    def test_standalone_smoke_run(self) -> None:
        """``python -m benchmarks.flaky --smoke`` starts the server, runs every system, stops it."""
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.flaky", "--smoke"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        for system in flaky.SYSTEMS:
            assert system in done.stdout
