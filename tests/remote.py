"""Work that the executor tests send to threads, worker processes and Dask workers.

Module-level, so a worker imports it by name (``tests.remote``) rather than
receiving it by value; kept free of test-only imports so a worker starts fast.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import trioflow


class Calls(trioflow.ParallelBatchNode):
    """A parallel batch node whose ``exec`` is ``params["fn"](item)``: one node for every work below."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        return self.params["fn"](item)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["results"] = exec_res


class Retried(Calls):
    """``exec`` gets ``(item, cur_retry)``: the attempt number as the worker sees it."""

    def exec(self, item: Any) -> Any:
        return self.params["fn"](item, self.cur_retry)


def pid(item: Any) -> tuple[Any, int]:
    """The item and the process that ran it."""
    return item, os.getpid()


def square(item: int) -> int:
    return item * item


def jittered_square(item: int) -> int:
    """``item**2`` after 0-2 ms, so items finish out of their input order."""
    time.sleep((item * 7 % 3) / 1000)
    return item * item


def nap(item: int) -> int:
    """20 ms of a blocking call."""
    time.sleep(0.02)
    return item


def pid_then_hang(path: str) -> None:
    """Write this process's pid to ``path``, then block far longer than any test waits."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def fail_first_else_wait(item: tuple[int, str]) -> int:
    """Item 0 fails at once; the others leave a mark in ``directory`` then block for half a second."""
    index, directory = item
    if index == 0:
        raise ValueError("item 0 fails")
    Path(directory, str(index)).touch()
    time.sleep(0.5)
    return index


def die_on_first_attempt(item: Any, attempt: int) -> tuple[Any, int, int]:
    """The OS kills this worker process on attempt 0 (SIGKILL); attempt 1 answers with its pid."""
    if attempt == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return item, attempt, os.getpid()


def task_key_fails_first(item: Any, attempt: int) -> tuple[int, str]:
    """On a Dask worker: attempt 0 fails naming its task key, attempt 1 returns its own key."""
    from distributed import get_worker

    key = str(get_worker().get_current_task())
    if attempt == 0:
        raise ValueError(key)
    return attempt, key


class Concurrency:
    """Counts the calls running at once in threads (the peak is what a test asserts)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


class Grid(trioflow.ParallelBatchFlow):
    """The seed's image x filter grid: one sub-flow run per (image, filter) pair."""

    def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"image": i, "filter": f} for i in range(2) for f in ("blur", "edges")]


class LoadImage(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> int:
        return int(self.params["image"])

    def exec(self, seed: int) -> bytes:
        from PIL import Image

        extent = (-2.0 + 0.25 * seed, -1.25, 0.75, 1.25)
        return Image.effect_mandelbrot((48, 48), extent, 64).convert("RGB").tobytes()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: bytes) -> None:
        shared.setdefault("pixels", {})[self.params["image"]] = exec_res


class ApplyFilter(trioflow.Node):
    def prep(self, shared: dict[str, Any]) -> tuple[bytes, str]:
        return shared["pixels"][self.params["image"]], self.params["filter"]

    def exec(self, job: tuple[bytes, str]) -> tuple[int, bytes]:
        from PIL import Image, ImageFilter

        pixels, name = job
        image = Image.frombytes("RGB", (48, 48), pixels)
        kind = ImageFilter.GaussianBlur(2) if name == "blur" else ImageFilter.FIND_EDGES
        return os.getpid(), image.filter(kind).tobytes()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: tuple[int, bytes]) -> None:
        shared.setdefault("out", {})[(self.params["image"], self.params["filter"])] = exec_res
