"""Scenario 8, ``cpu``: the image x filter grid with real pixel work (Pillow), on the machine's cores.

N param sets (generated images x four filters) through a ``ParallelBatchFlow`` whose
sub-flow loads a generated image (inline, about 1 ms), denoises it and filters it eight
times over (the CPU-bound step, about 75 ms at 512 px) and saves a digest of the result
(inline).  Only the filter step moves.  Systems:

- ``processes``, ``threads``, ``inline``: trioflow, the filter node's executor
  ``Processes(2)``, ``Threads(2)``, none;
- ``dask``: trioflow, the filter node on ``Dask(client)`` (a ``LocalCluster`` of 2
  single-threaded worker processes, started once per group, outside the timing), in a
  group of its own against ``inline`` (an idle cluster still takes CPU: see :func:`plan`)
  and ``dask-submit``, the hand-written Dask version (every param set submitted at once,
  the results read in order): the most this cluster gives here;
- ``pocketflow``: PocketFlow's ``AsyncParallelBatchFlow`` over the same three steps
  (its synchronous work runs in the event loop);
- ``process-pool``: a hand-written ``concurrent.futures.ProcessPoolExecutor`` (2 workers,
  spawned, warm): each image made in the main process, submitted with its filter, the
  digests read in order.

Targets (the performance contract in README.md), at the largest N: ``processes`` and
``dask`` at least 1.6x faster than ``inline``; ``processes`` within 1.15x of the
hand-written pool.  Pillow's filters release the GIL, so ``threads`` gains too here;
pure-Python CPU work would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import trio

import trioflow
from trioflow.executors import Dask, Processes, Threads

from ..core import (
    Context,
    Group,
    Mode,
    Panel,
    Result,
    Scenario,
    Target,
    at_least,
    at_most,
    cpu_ratio,
    figures_in,
    largest,
    ratio,
    run_timed,
    series,
)
from ._dask import local_cluster

SYSTEMS = ("processes", "threads", "inline", "pocketflow", "process-pool", "dask", "dask-submit")
FILTERS = ("blur", "sharpen", "edges", "median")
WORKERS = 2
#: Filter passes per item: enough pixel work that shipping a 512 px image each way (pickled,
#: about 3 ms per direction) is small beside it, as with real filters on photos.
PASSES = 8


# -- the pixel work ------------------------------------------------------------------


def make_image(seed: int, size: int) -> Any:
    """A generated ``size`` x ``size`` RGB image (about a millisecond): gradients, turned by the seed."""
    from PIL import Image

    gradient = Image.linear_gradient("L").rotate(seed * 37 % 360)
    rings = Image.radial_gradient("L")
    stripes = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).point(lambda v: (v * (seed + 3)) % 256)
    return Image.merge("RGB", (gradient, rings, stripes)).resize((size, size))


def apply_filter(image: Any, name: str) -> Any:
    """The CPU-bound step (about 75 ms at 512 px here): a median denoise, then the filter :data:`PASSES` times."""
    from PIL import ImageFilter

    kinds = {
        "blur": ImageFilter.GaussianBlur(5),
        "sharpen": ImageFilter.UnsharpMask(radius=4, percent=200),
        "edges": ImageFilter.FIND_EDGES,
        "median": ImageFilter.MedianFilter(3),
    }
    image = image.filter(ImageFilter.MedianFilter(3))
    for _ in range(PASSES):
        image = image.filter(kinds[name])
    return image


def digest(image: Any) -> int:
    """What is saved: a checksum of the histogram (cheap, inline)."""
    return sum(i * count for i, count in enumerate(image.histogram()))


def grid(n: int) -> list[dict[str, Any]]:
    """``n`` param sets: image ``i // 4`` under filter ``i % 4``."""
    return [{"image": i // len(FILTERS), "filter": FILTERS[i % len(FILTERS)]} for i in range(n)]


# -- trioflow: the grid, the filter node on an executor -------------------------------


def _key(params: dict[str, Any]) -> tuple[int, str]:
    return params["image"], params["filter"]


class LoadImage(trioflow.Node):
    def exec(self, prep_res: Any) -> Any:
        return make_image(self.params["image"], self.params["size"])

    def post(self, shared: dict[Any, Any], prep_res: Any, exec_res: Any) -> None:
        shared[_key(self.params)] = exec_res


class ApplyFilter(trioflow.Node):
    def prep(self, shared: dict[Any, Any]) -> tuple[Any, str]:
        return shared[_key(self.params)], self.params["filter"]

    def exec(self, job: tuple[Any, str]) -> Any:
        return apply_filter(*job)

    def post(self, shared: dict[Any, Any], prep_res: Any, exec_res: Any) -> None:
        shared[_key(self.params)] = exec_res


class SaveImage(trioflow.Node):
    def prep(self, shared: dict[Any, Any]) -> Any:
        return shared.pop(_key(self.params))

    def exec(self, image: Any) -> int:
        return digest(image)

    def post(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
        shared["saved"][_key(self.params)] = exec_res


class ImageGrid(trioflow.ParallelBatchFlow):
    def prep(self, shared: dict[Any, Any]) -> list[dict[str, Any]]:
        return grid(shared["n"])


async def trioflow_grid(n: int, cap: int | None, size: int, executor: Any) -> dict[Any, int]:
    load = LoadImage()
    load >> ApplyFilter(executor=executor) >> SaveImage()
    shared: dict[Any, Any] = {"n": n, "saved": {}}
    await ImageGrid(start=load, max_concurrency=cap, params={"size": size}).run(shared)
    return shared["saved"]  # type: ignore[no-any-return]


# -- PocketFlow: the same three steps, sync work in the event loop ---------------------


def pocketflow_grid(n: int, size: int) -> Callable[[], Any]:
    import pocketflow

    class Load(pocketflow.AsyncNode):  # type: ignore[misc]
        async def exec_async(self, prep_res: Any) -> Any:
            return make_image(self.params["image"], size)

        async def post_async(self, shared: dict[Any, Any], prep_res: Any, exec_res: Any) -> None:
            shared[_key(self.params)] = exec_res

    class Filter(pocketflow.AsyncNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[Any, Any]) -> Any:
            return shared[_key(self.params)], self.params["filter"]

        async def exec_async(self, job: tuple[Any, str]) -> Any:
            return apply_filter(*job)

        async def post_async(self, shared: dict[Any, Any], prep_res: Any, exec_res: Any) -> None:
            shared[_key(self.params)] = exec_res

    class Save(pocketflow.AsyncNode):  # type: ignore[misc]
        async def prep_async(self, shared: dict[Any, Any]) -> Any:
            return shared.pop(_key(self.params))

        async def exec_async(self, image: Any) -> int:
            return digest(image)

        async def post_async(self, shared: dict[Any, Any], prep_res: Any, exec_res: int) -> None:
            shared["saved"][_key(self.params)] = exec_res

    class Grid(pocketflow.AsyncParallelBatchFlow):  # type: ignore[misc]
        async def prep_async(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
            return grid(n)

    async def main() -> Any:
        load = Load()
        load >> Filter() >> Save()
        shared: dict[Any, Any] = {"saved": {}}
        await Grid(start=load).run_async(shared)
        return shared["saved"]

    return main


# -- the hand-written process pool -----------------------------------------------------


def pool_grid(pool: ProcessPoolExecutor, n: int, size: int) -> dict[Any, int]:
    futures = {
        _key(params): pool.submit(apply_filter, make_image(params["image"], size), params["filter"])
        for params in grid(n)
    }
    return {key: digest(future.result()) for key, future in futures.items()}


def dask_submit_grid(client: Any, n: int, size: int) -> dict[Any, int]:
    """The hand-written Dask version: every param set submitted at once, the digests read in order."""
    futures = {
        _key(params): client.submit(apply_filter, make_image(params["image"], size), params["filter"], pure=False)
        for params in grid(n)
    }
    return {key: digest(future.result()) for key, future in futures.items()}


# -- running ------------------------------------------------------------------------------


@contextlib.contextmanager
def resources(systems: Sequence[str]) -> Iterator[dict[str, Any]]:
    """What the systems need, started (and warmed) outside the timing: a process pool, a cluster."""
    with contextlib.ExitStack() as stack:
        made: dict[str, Any] = {}
        if "process-pool" in systems:
            pool = stack.enter_context(
                ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
            )
            list(pool.map(digest, [make_image(0, 8)] * WORKERS))  # start (and import in) both workers
            made["pool"] = pool
        if "processes" in systems:
            made["processes"] = Processes(max_workers=WORKERS)
        if "dask" in systems or "dask-submit" in systems:
            made["client"] = stack.enter_context(local_cluster(WORKERS))
        yield made


def timed(group: Group, system: str, made: dict[str, Any]) -> tuple[float, float]:
    """One run of ``system`` over ``group.n`` param sets, timed around the run alone."""
    n, cap, size = group.n, group.cap, int(group.params["size"])
    executors: dict[str, Callable[[], Any]] = {
        "inline": lambda: None,
        "threads": lambda: Threads(max_workers=WORKERS),
        "processes": lambda: made["processes"],
        "dask": lambda: Dask(made["client"]),
    }
    start, start_cpu = 0.0, 0.0
    if system in executors:
        executor = executors[system]()

        async def run() -> tuple[float, float, dict[Any, int]]:
            start, start_cpu = time.perf_counter(), time.process_time()
            saved = await trioflow_grid(n, cap, size, executor)
            return start, start_cpu, saved

        start, start_cpu, saved = trio.run(run)
    elif system == "pocketflow":
        main = pocketflow_grid(n, size)

        async def run_asyncio() -> tuple[float, float, dict[Any, int]]:
            start, start_cpu = time.perf_counter(), time.process_time()
            return start, start_cpu, await main()

        start, start_cpu, saved = asyncio.run(run_asyncio())
    elif system == "process-pool":
        start, start_cpu = time.perf_counter(), time.process_time()
        saved = pool_grid(made["pool"], n, size)
    elif system == "dask-submit":
        start, start_cpu = time.perf_counter(), time.process_time()
        saved = dask_submit_grid(made["client"], n, size)
    else:
        raise ValueError(f"cpu: no system {system!r}")
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    assert len(saved) == n and all(isinstance(v, int) for v in saved.values()), f"{system}: wrong output"
    return wall, cpu


def once(group: Group, system: str) -> tuple[float, float]:
    """One run in a fresh process (the memory child): its resources started here, outside the timing."""
    with resources((system,)) as made:
        return timed(group, system, made)


def run(group: Group, context: Context) -> Result:
    """The group's resources started once, then :func:`run_timed` (a memory child starts its own)."""
    with resources(group.systems) as made:
        here = replace(SCENARIO, once=lambda g, s: timed(g, s, made))
        result = run_timed(here, group, context)
    result.ours = group.systems[0]
    return result


def plan(mode: Mode) -> list[Group]:
    """The grid without Dask, then Dask against inline in a group of its own.

    A Dask cluster is busy even when idle (heartbeats, and a scheduler loop in this
    process that the Trio thread shares the GIL with): alive beside the other
    systems, it cost ``Processes`` about 10 % and the process pool about 4 % here.
    """

    def group(n: int, size: int, repeats: int, systems: Sequence[str], variant: str = "") -> Group:
        return Group("cpu", n, 2 * WORKERS, tuple(systems), repeats, variant=variant, params={"size": size},
                     warm_n=len(FILTERS))

    local = tuple(s for s in SYSTEMS if not s.startswith("dask"))
    if mode == "smoke":  # no Dask: a cluster takes seconds to start
        return [group(4, 32, 1, local)]
    n, repeats = (16, 2) if mode == "quick" else (32, 3)
    return [group(n, 512, repeats, local), group(n, 512, repeats, ("dask", "dask-submit", "inline"), "dask")]


def targets(results: Sequence[Result]) -> list[Target]:
    out: list[Target] = []
    for system in ("processes", "dask"):
        found = largest(results, system)
        if found is None:
            continue
        group, figure = found
        figures = figures_in(results, group)
        where = f"cpu, N={group.n} param sets, {group.params['size']} px, {WORKERS} workers"
        if "inline" in figures:
            out.append(at_least(f"cpu: {system.capitalize()} speed-up over inline", ratio(figures["inline"], figure),
                                1.6, where))
        if "process-pool" in figures:
            pool = figures["process-pool"]
            out.append(at_most("cpu: Processes vs a hand-written ProcessPoolExecutor", ratio(figure, pool), 1.15,
                               where, cpu=cpu_ratio(figure, pool)))
    return out


def notes(results: Sequence[Result]) -> list[str]:
    """Where the Dask target stands against what the cluster gives a hand-written loop."""
    found = largest(results, "dask-submit")
    if found is None:
        return []
    group, hand = found
    figures = figures_in(results, group)
    if "inline" not in figures or "dask" not in figures:
        return []
    return [f"cpu, Dask: the hand-written submit loop is {ratio(figures['inline'], hand):.2f}x faster than inline on "
            f"this cluster; trioflow on Dask takes {ratio(figures['dask'], hand):.2f}x its time"]


def panels(results: Sequence[Result]) -> list[Panel]:
    """Speed-up over inline, a bar per system."""

    def speedup(group: Group, figure: Any) -> float | None:
        inline = figures_in(results, group).get("inline")
        return inline.median / figure.median if inline is not None else None

    points = series(results, speedup, x=lambda g: f"N={g.n}, {g.params['size']} px")
    if not points:
        return []
    return [Panel("cpu (image x filter grid, Pillow): speed-up over inline", points, x_label="",
                  y_label="inline time ÷ time", log_y=False, reference=1.0)]


SCENARIO = Scenario(
    name="cpu",
    title="8 cpu",
    about="the image x filter grid, Pillow pixel work: inline, Threads, Processes, Dask, PocketFlow, a process pool",
    plan=plan,
    once=once,
    run=run,
    targets=targets,
    notes=notes,
    panels=panels,
    labels={
        "processes": "trioflow ParallelBatchFlow, filter node on Processes(2)",
        "dask": "trioflow ParallelBatchFlow, filter node on Dask (LocalCluster, 2 worker processes)",
        "threads": "trioflow ParallelBatchFlow, filter node on Threads(2)",
        "inline": "trioflow ParallelBatchFlow, filter node inline",
        "pocketflow": "PocketFlow AsyncParallelBatchFlow (sync work in the event loop)",
        "process-pool": "hand-written concurrent.futures.ProcessPoolExecutor(2) loop",
        "dask-submit": "hand-written Dask: client.submit of every param set, results read in order",
    },
    order=8,
)
