"""The executor scenarios' own logic (cpu, blocking, dask-scale): what their targets compare.

No figure is measured here; the figures are made up so that each target's direction
and its source (which group, which systems) can be checked.  The smoke runs of the
scenarios are in tests/test_benchmarks_smoke.py.
"""

from __future__ import annotations

from benchmarks.core import Figure, Group, Result
from benchmarks.scenarios import blocking, cpu, dask_scale


def result(group: Group, seconds: dict[str, float], **extra: dict[str, float]) -> Result:
    return Result(group, {s: Figure(runs=[t], cpu=[t], extra=dict(extra.get(s.replace("-", "_"), {})))
                          for s, t in seconds.items()})


class TestCpuTargets:
    def test_cpu_targets_are_speed_ups_over_inline_and_the_ratio_to_the_pool(self) -> None:
        """Processes at 1 s and Dask at 1.5 s, each against inline at 2 s in its group: 2.0 (met) and 1.33 (missed)."""
        (local, dask) = cpu.plan("full")
        assert "dask" not in local.systems and dask.systems == ("dask", "dask-submit", "inline")
        results = [
            result(local, {"processes": 1.0, "threads": 1.2, "inline": 2.0, "pocketflow": 2.1, "process-pool": 0.9}),
            result(dask, {"dask": 1.5, "dask-submit": 1.4, "inline": 2.0}),
        ]
        targets = {t.name: t for t in cpu.targets(results)}
        assert targets["cpu: Processes speed-up over inline"].measured == 2.0
        assert targets["cpu: Processes speed-up over inline"].met
        assert not targets["cpu: Dask speed-up over inline"].met
        pool = targets["cpu: Processes vs a hand-written ProcessPoolExecutor"]
        assert pool.measured is not None and abs(pool.measured - 1.0 / 0.9) < 1e-9 and pool.met


class TestBlockingTargets:
    def test_blocking_target_is_wall_time_over_the_ideal(self) -> None:
        """200 calls of 50 ms at cap 20: the ideal is 0.5 s, so 0.54 s is 1.08x (met) and 0.6 s is 1.2x (missed)."""
        group = Group("blocking", 200, 20, blocking.SYSTEMS, params={"delay": 0.05})
        assert blocking.ideal(group) == 0.5
        for seconds, met in ((0.54, True), (0.6, False)):
            (target,) = blocking.targets([result(group, {"trioflow": seconds})])
            assert target.met is met and target.measured is not None
            assert abs(target.measured - seconds / 0.5) < 1e-9


class TestDaskScaleTargets:
    def test_dask_scale_targets_read_the_largest_group_and_the_growth_over_the_smallest(self) -> None:
        """Futures above the cap miss; memory growth is the largest N's minus the smallest N's; time vs the loop."""
        small = Group("dask-scale", 5000, 64, dask_scale.SYSTEMS)
        large = Group("dask-scale", 20_000, 64, dask_scale.SYSTEMS)
        results = [
            result(small, {"trioflow": 2.0, "submit-loop": 2.0}, trioflow={"futures_max": 64, "rss_growth_mb": 5.0}),
            result(large, {"trioflow": 9.0, "submit-loop": 8.0}, trioflow={"futures_max": 65, "rss_growth_mb": 12.0}),
        ]
        targets = {t.name.split(" at ")[0]: t for t in dask_scale.targets(results)}
        futures = targets["dask-scale: futures alive (most seen)"]
        assert futures.measured == 65 and futures.met is False
        growth = targets["dask-scale: memory growth"]
        assert growth.measured == 7.0 and growth.met
        loop = targets["dask-scale: time vs a hand-written submit/as_completed loop"]
        assert loop.measured == 9.0 / 8.0 and loop.met
