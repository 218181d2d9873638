"""Run one configuration once in this fresh process and print its peak memory.

``python -m benchmarks.child '{"scenario": ..., "system": ..., "n": ..., "cap": ...}'``
prints one JSON line: the peak resident set size before the run (after
every import, so each child starts from the same baseline) and after it.
One process per configuration, since a process's peak cannot be split
between the runs it made.

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
    """Import every system (a common baseline), then run ``spec`` once."""
    from . import workloads  # imports trio, asyncio, pocketflow, aiometer, trioflow

    before = maxrss_mb()
    if spec["scenario"] == "bridge":
        import trio

        from . import bridge

        trio.run(bridge.run_bridge, spec["n"])
        seconds = None
    else:
        seconds, _ = workloads.time_once(spec["scenario"], spec["system"], spec["n"], spec["cap"])
    return {"before_mb": before, "peak_mb": maxrss_mb(), "seconds": seconds}


def main() -> None:
    print(json.dumps(run(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
