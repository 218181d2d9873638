"""Scenario ``flaky``: 2,000 calls to a real, flaky HTTP API on 127.0.0.1, cap 32.

``python -m benchmarks.flaky`` (``--smoke``, ``--quick``, ``--n``) runs it alone.

The API (``benchmarks.localapi``, h11 on ``trio.serve_tcp``, in a process of
its own, started and stopped here, bounded in requests and seconds) answers
each request after 20-200 ms; 10 % of requests get a 429 with ``Retry-After: 1``
and 3 % a 500, drawn per (item, attempt) from a seed, so every system meets
the same answers.  Every system is the same app: ``httpx.AsyncClient``, at
most 32 requests at once, a 429 waited out for its Retry-After, a 500 retried
after 0.1 s x 2^k, up to 10 attempts.

- ``trioflow``: ``ParallelBatchNode(max_concurrency=32, max_retries=10,
  wait=0.1, backoff=2)`` on Trio; the node's retry policy honours the
  Retry-After and gives the attempt slot back while the item waits.
- ``pocketflow``: ``AsyncParallelBatchNode`` with an ``asyncio.Semaphore(32)``
  in ``exec_async``, the retries inside it (the SDK habit: sleep in the call);
- ``anyio``: a hand-written pool of 32 anyio workers (asyncio), same habit;
- ``aiometer``: ``aiometer.amap(max_at_once=32)`` (asyncio), same habit.

The ideal: every one of the 32 slots busy with an attempt all the time, that
is the server time of every attempt the answers call for, divided by 32.
Target: trioflow faster than each peer and within 1.15x of the ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

import trioflow

from .localapi import FLAKY_RETRY_AFTER, flaky_schedule, flaky_work

ROOT = Path(__file__).resolve().parent.parent
CAP = 32
N = 2000
MAX_ATTEMPTS = 10
WAIT, BACKOFF = 0.1, 2.0
SYSTEMS = ("trioflow", "pocketflow", "anyio", "aiometer")
LABELS = {
    "trioflow": "trioflow ParallelBatchNode(max_concurrency=32), the node's retries (Retry-After, slot freed)",
    "pocketflow": "PocketFlow AsyncParallelBatchNode + asyncio.Semaphore(32), retries sleeping inside the call",
    "anyio": "hand-written anyio pool of 32 workers (asyncio), retries sleeping inside the call",
    "aiometer": "aiometer.amap(max_at_once=32) (asyncio), retries sleeping inside the call",
    "ideal": "ideal: the server time of every attempt / 32 (every slot always busy)",
}
TARGET_IDEAL = 1.15
#: The server stops by itself after this many seconds, whatever happens.
SERVER_SECONDS = 600.0


def ideal(n: int, seed: int = 0) -> float:
    """Seconds with all 32 slots busy with the attempts the API's answers call for."""
    busy, _ = flaky_work(seed, n, MAX_ATTEMPTS)
    return busy / CAP


def _limits() -> httpx.Limits:
    return httpx.Limits(max_connections=2 * CAP, max_keepalive_connections=2 * CAP)


# -- the app, per system -------------------------------------------------------------


class _Fetch(trioflow.ParallelBatchNode):
    """GET ``/item/<i>``; a 429 or a 500 raises ``httpx.HTTPStatusError`` (the node's policy retries)."""

    def prep(self, shared: dict[str, Any]) -> range:
        return range(shared["n"])

    async def exec(self, item: int) -> int:
        response = await self.params["client"].get(f"{self.params['prefix']}/item/{item}")
        response.raise_for_status()
        return response.json()["item"]  # type: ignore[no-any-return]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["results"] = exec_res


async def _trioflow(url: str, n: int, prefix: str) -> list[int]:
    async with httpx.AsyncClient(base_url=url, limits=_limits()) as client:
        node = _Fetch(max_concurrency=CAP, max_retries=MAX_ATTEMPTS, wait=WAIT, backoff=BACKOFF)
        node.set_params({"client": client, "prefix": prefix})
        shared: dict[str, Any] = {"n": n}
        await node.run(shared)
    return shared["results"]  # type: ignore[no-any-return]


async def _sdk_call(
    client: httpx.AsyncClient, path: str, item: int, sleep: Callable[[float], Awaitable[Any]]
) -> int:
    """The SDK habit: retry inside the call, sleeping Retry-After on a 429, backing off on a 500."""
    for attempt in range(MAX_ATTEMPTS):
        response = await client.get(f"{path}/item/{item}")
        if response.status_code == 200:
            return response.json()["item"]  # type: ignore[no-any-return]
        if attempt + 1 == MAX_ATTEMPTS:
            response.raise_for_status()
        after = response.headers.get("retry-after")
        await sleep(float(after) if after is not None else WAIT * BACKOFF**attempt)
    raise AssertionError("unreachable")


async def _pocketflow(url: str, n: int, prefix: str) -> list[int]:
    import pocketflow

    sem = asyncio.Semaphore(CAP)

    async with httpx.AsyncClient(base_url=url, limits=_limits()) as client:

        class Fetch(pocketflow.AsyncParallelBatchNode):  # type: ignore[misc]
            async def prep_async(self, shared: dict[str, Any]) -> list[int]:
                return list(range(shared["n"]))

            async def exec_async(self, item: int) -> int:
                async with sem:
                    return await _sdk_call(client, prefix, item, asyncio.sleep)

            async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
                shared["results"] = exec_res

        shared: dict[str, Any] = {"n": n}
        await Fetch().run_async(shared)
    return shared["results"]  # type: ignore[no-any-return]


async def _anyio(url: str, n: int, prefix: str) -> list[int]:
    import anyio

    results = [0] * n
    items = iter(range(n))
    async with httpx.AsyncClient(base_url=url, limits=_limits()) as client:

        async def worker() -> None:
            for item in items:
                results[item] = await _sdk_call(client, prefix, item, anyio.sleep)

        async with anyio.create_task_group() as tg:
            for _ in range(CAP):
                tg.start_soon(worker)
    return results


async def _aiometer(url: str, n: int, prefix: str) -> list[int]:
    import aiometer
    import anyio

    results = [0] * n
    async with httpx.AsyncClient(base_url=url, limits=_limits()) as client:

        async def one(item: int) -> int:
            return await _sdk_call(client, prefix, item, anyio.sleep)

        async with aiometer.amap(one, range(n), max_at_once=CAP) as done:
            async for value in done:
                results[value] = value
    return results


def time_system(system: str, url: str, n: int, prefix: str = "") -> tuple[float, float]:
    """Run ``system``'s app against the API at ``url`` (paths under ``prefix``): (wall s, CPU s) of the run alone."""
    runners = {"trioflow": _trioflow, "pocketflow": _pocketflow, "anyio": _anyio, "aiometer": _aiometer}
    app = runners[system]

    async def timed() -> tuple[float, float, list[int]]:
        start, cpu = time.perf_counter(), time.process_time()
        out = await app(url, n, prefix)
        return time.perf_counter() - start, time.process_time() - cpu, out

    wall, cpu, out = trio.run(timed) if system == "trioflow" else asyncio.run(timed())
    assert out == list(range(n)), f"{system} returned wrong results"
    return wall, cpu


class Server:
    """The flaky API in a child process: started on enter (its port read back), stopped on exit."""

    def __init__(self, seed: int, max_requests: int, retry_after: int = FLAKY_RETRY_AFTER) -> None:
        self.seed = seed
        self.max_requests = max_requests
        self.retry_after = retry_after
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Server:
        with tempfile.TemporaryDirectory() as tmp:
            port_file = Path(tmp) / "port"
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.localapi", "flaky", "--seed", str(self.seed),
                 "--retry-after", str(self.retry_after),
                 "--port-file", str(port_file), "--max-requests", str(self.max_requests),
                 "--seconds", str(SERVER_SECONDS)],
                cwd=ROOT, env=env,
            )
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("the flaky API server did not start")
                time.sleep(0.02)
            self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


def once(system: str, n: int, seed: int = 0, retry_after: int = FLAKY_RETRY_AFTER) -> tuple[float, float]:
    """One run of ``system`` over ``n`` items against a fresh server (its start and stop not timed)."""
    _, attempts = flaky_work(seed, n, MAX_ATTEMPTS)
    with Server(seed, attempts + 10, retry_after) as server:
        return time_system(system, server.url, n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flaky", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny: 16 items, Retry-After 0, one run each")
    size.add_argument("--quick", action="store_true", help="500 items, one run each")
    parser.add_argument("--n", type=int, help=f"items (default {N:,})")
    parser.add_argument("--repeats", type=int, help="runs per system (default 3; 1 with --smoke/--quick)")
    parser.add_argument("--system", action="append", choices=SYSTEMS, help="run only these systems")
    parser.add_argument("--retry-after", type=int, help="seconds in each 429 (default 1; 0 with --smoke)")
    args = parser.parse_args(argv)
    n = args.n or (16 if args.smoke else 500 if args.quick else N)
    retry_after = args.retry_after if args.retry_after is not None else 0 if args.smoke else FLAKY_RETRY_AFTER
    repeats = args.repeats or (1 if args.smoke or args.quick else 3)
    systems = args.system or list(SYSTEMS)
    times: dict[str, list[float]] = {s: [] for s in systems}
    _, attempts = flaky_work(0, n, MAX_ATTEMPTS)
    with Server(0, attempts * len(systems) * repeats + 100, retry_after) as server:
        for rep in range(repeats):
            for system in systems[rep % len(systems):] + systems[: rep % len(systems)]:
                times[system].append(time_system(system, server.url, n, prefix=f"/{system}/{rep}")[0])
    best = ideal(n)
    perfect = flaky_schedule(0, n, CAP, MAX_ATTEMPTS, WAIT, BACKOFF, retry_after)
    print(f"flaky: {n:,} requests, cap {CAP}, load {os.getloadavg()[0]:.2f}; ideal {best:.2f} s "
          f"(all {CAP} slots busy), perfect pool {perfect:.2f} s (no overhead; the last Retry-Afters)")
    medians = {system: statistics.median(runs) for system, runs in times.items()}
    ours = medians.get("trioflow")
    for system, median in medians.items():
        vs = f"  trioflow / it {ours / median:.2f}" if ours is not None and system != "trioflow" else ""
        print(f"{system:>10}: median {median:6.2f} s  ÷ ideal {median / best:.2f}  ÷ perfect pool "
              f"{median / perfect:.2f}{vs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
