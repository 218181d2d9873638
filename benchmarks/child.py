"""Run one configuration once in this fresh process and print its peak memory.

``python -m benchmarks.child '{"module": ..., "group": {...}, "system": ...}'``
(as :func:`benchmarks.core.measure_in_child` calls it) imports the scenario's
module alone, then prints one JSON line: the peak resident set size before the
run (after every import, so each system of a group starts from the same
baseline) and after it, and the run's seconds.  One process per configuration,
since a process's peak cannot be split between the runs it made.

``python -m benchmarks.child --group '{"module": ..., "group": {...}, "memory": ...}'``
runs a whole group of an isolated scenario (:func:`benchmarks.core.run_in_child`):
progress events as JSON lines on stderr, the result as the last line of stdout.

On Linux the peak is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` is no
good there, since it keeps the parent's peak across ``fork`` + ``exec`` (a
child of a 300 MB parent reports 300 MB).  Elsewhere ``ru_maxrss`` it is.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def maxrss_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # macOS: bytes; BSDs: KiB


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Import the scenario's module (its systems: a common baseline), then run ``spec`` once."""
    import importlib

    from .core import Group, Scenario

    scenario = importlib.import_module(spec["module"]).SCENARIO
    assert isinstance(scenario, Scenario) and scenario.once is not None, spec
    group = Group.from_json(spec["group"])
    before = maxrss_mb()
    seconds, _ = scenario.once(group, spec["system"])
    return {"before_mb": before, "peak_mb": maxrss_mb(), "seconds": seconds}


class _Events:
    """Progress as JSON lines on stderr, for :func:`benchmarks.core.run_in_child` to relay."""

    def status(self, text: str) -> None:
        print(json.dumps({"progress": 1, "status": text}), file=sys.stderr, flush=True)

    def advance(self, steps: int = 1) -> None:
        print(json.dumps({"progress": 1, "advance": steps}), file=sys.stderr, flush=True)


def run_group(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a whole group of an isolated scenario here; its :class:`~benchmarks.core.Result` as JSON."""
    import importlib

    from .core import Context, Group, Scenario

    scenario = importlib.import_module(spec["module"]).SCENARIO
    assert isinstance(scenario, Scenario), spec
    group = Group.from_json(spec["group"])
    return scenario.run_group(group, Context(_Events(), spec["memory"]), here=True).to_json()


def main() -> None:
    if sys.argv[1] == "--group":
        print(json.dumps(run_group(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
