"""Run one configuration once in this fresh process and print its peak memory.

``python -m benchmarks.child '{"module": ..., "group": {...}, "system": ...}'``
(as :func:`benchmarks.core.measure_in_child` calls it) imports the scenario's
module alone, then prints one JSON line: the peak resident set size before the
run (after every import, so each system of a group starts from the same
baseline) and after it, and the run's seconds.  One process per configuration,
since a process's peak cannot be split between the runs it made.

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


def main() -> None:
    print(json.dumps(run(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
