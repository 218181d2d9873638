"""The ``api`` scenario's own logic: the simulated provider, its ideal, the standalone smoke run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import api
from trioflow._throttle import is_throttle_error, retry_after_of

ROOT = Path(__file__).resolve().parent.parent


class TestProvider:
    def test_Provider_is_a_token_bucket_with_a_burst(self) -> None:
        """A burst of 10 passes at once, the 11th is a 429 whose Retry-After is the time to the next token."""
        provider = api.Provider(((0.0, 50.0),), burst=10)
        verdicts = [provider.arrive(i, 0.0)[1] for i in range(11)]
        assert verdicts[:10] == [None] * 10
        assert verdicts[10] == pytest.approx(1 / 50)
        assert provider.arrive(11, 0.02)[1] is None  # one token back after 20 ms
        assert (provider.attempts, provider.rejected) == (12, 1)

    def test_Provider_refills_at_the_rate_in_force(self) -> None:
        """Across the drop at t=20 the bucket refills at 50/s before and 20/s after."""
        provider = api.Provider.for_case("dropping free", 0)
        provider.level = 0.0
        provider.updated = 19.9
        provider._refill(20.1)
        assert provider.level == pytest.approx(0.1 * 50 + 0.1 * 20)

    def test_Provider_rejections_cost_a_token_down_to_a_minute_of_debt(self) -> None:
        """With rejections costing, a storm digs the bucket below zero (longer Retry-After), at most 60 s deep."""
        provider = api.Provider.for_case("steady costing", 0)
        for i in range(5000):
            provider.arrive(i, 0.0)
        assert provider.level == -60 * 50
        _, retry_after = provider.arrive(0, 0.0)
        assert retry_after == pytest.approx((1 + 3000) / 50)

    def test_RateLimited_reads_as_a_throttle(self) -> None:
        """The simulated 429 has httpx's shape, so the default readers see a throttle and its retry-after-ms."""
        exc = api.RateLimited(0.0213)
        assert is_throttle_error(exc) and retry_after_of(exc) == 0.022

    @pytest.mark.parametrize(
        ("case", "n", "expected"),
        [("steady free", 3000, (3000 - 10) / 50 + 1), ("dropping free", 3000, 20 + (3000 - 1010) / 20 + 1),
         ("dropping costing", 500, (500 - 10) / 50 + 1)],
    )
    def test_Provider_ideal(self, case: str, n: int, expected: float) -> None:
        """The ideal: when the provider could admit the n-th call at best, plus the median latency."""
        assert api.Provider.for_case(case, 0).ideal(n) == pytest.approx(expected)


class TestRuns:
    def test_run_once_is_deterministic_and_meets_the_targets_at_small_size(self) -> None:
        """The same seed gives the same virtual time (up to Trio's randomised task order, microseconds);
        the adaptive Throttle finishes every call."""
        first = api.run_once("trioflow", "dropping costing", 1, 1500)
        again = api.run_once("trioflow", "dropping costing", 1, 1500)
        assert first.finished and first.seconds == pytest.approx(again.seconds, rel=1e-3)
        assert abs(first.attempts - again.attempts) <= 5
        assert first.done == 1500 and first.rates
        assert first.ratio <= api.TARGET_TIME and first.throttled_share <= api.TARGET_THROTTLED

    def test_a_run_that_never_ends_is_stopped(self) -> None:
        """A system that hammers the provider is stopped at its attempt budget and reported as unfinished."""
        outcome = api.run_once("anyio", "steady costing", 0, 100)
        assert not outcome.finished and outcome.error.startswith("stopped")
        assert outcome.attempts <= api.MAX_ATTEMPTS_PER_CALL * 100 + 50

    def test_standalone_smoke_run(self, tmp_path: Path) -> None:
        """``python -m benchmarks.api --smoke`` runs every system and case and prints the verdicts."""
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.api", "--smoke", "--plot", str(tmp_path / "rate.png")],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        for word in (*api.SYSTEMS, *api.CASES):
            assert word in done.stdout
        assert (tmp_path / "rate.png").read_bytes().startswith(b"\x89PNG")
