"""Retries after a 429 against a real HTTP server on 127.0.0.1, with an httpx client.

The server (``benchmarks.localapi``: h11 on ``trio.serve_tcp``) runs in the
test's own Trio run on the real clock, logs every request's arrival and counts
its open connections.  Retry-After values are a few hundred milliseconds, so
the module runs in about two seconds; every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import trioflow
from benchmarks.localapi import LocalAPI, Reply

pytestmark = pytest.mark.filterwarnings("error")


@asynccontextmanager
async def serving(respond: Callable[[str, float], Reply]) -> AsyncIterator[LocalAPI]:
    """A LocalAPI listening on 127.0.0.1 for the block; stopped (and its connections closed) after it."""
    api = LocalAPI(respond, max_requests=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve)
        yield api
        nursery.cancel_scope.cancel()


def throttle_first(retry_after: Callable[[int], tuple[str, str]]) -> Callable[[str, float], Reply]:
    """``/item/<i>``: the first request answers 429 with ``retry_after(i)``'s header; later ones 200."""
    seen: set[str] = set()

    def respond(path: str, arrival: float) -> Reply:
        item = int(path.rsplit("/", 1)[-1])
        if path not in seen:
            seen.add(path)
            return Reply(429, (retry_after(item),))
        return Reply(200, (), 0.02, b'{"item": %d}' % item)

    return respond


class Fetch(trioflow.ParallelBatchNode):
    """GET ``/item/<i>`` for each item with the httpx client in ``params``; a 4xx/5xx raises."""

    def prep(self, shared: dict[str, Any]) -> range:
        return range(shared["n"])

    async def exec(self, item: int) -> int:
        response = await self.params["client"].get(f"/item/{item}")
        response.raise_for_status()
        return response.json()["item"]  # type: ignore[no-any-return]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["results"] = exec_res


def header(item: int) -> tuple[str, str]:
    """Mostly ``retry-after-ms`` (OpenAI's header), one item with the standard ``retry-after`` seconds."""
    return ("retry-after", "1") if item == 3 else ("retry-after-ms", str(100 + 50 * (item % 4)))


class TestRetryAfterOverHTTP:
    @pytest.mark.parametrize("shared_throttle", [False, True])
    async def test_every_retry_after_a_429_arrives_no_earlier_than_its_Retry_After(
        self, shared_throttle: bool
    ) -> None:
        """Each item's retry reaches the server no earlier than the Retry-After of its 429, whether the
        node's own retry policy honours it (per item) or a Throttle pauses every user for it."""
        async with serving(throttle_first(header)) as api, httpx.AsyncClient(base_url=api.url) as client:
            throttle = trioflow.Throttle() if shared_throttle else None
            node = Fetch(max_concurrency=4, max_retries=2, throttle=throttle, params={"client": client})
            shared: dict[str, Any] = {"n": 8}
            with trio.fail_after(10):
                await node.run(shared)
        assert shared["results"] == list(range(8))
        by_path: dict[str, list[Any]] = {}
        for arrival in api.arrivals:
            by_path.setdefault(arrival.path, []).append(arrival)
        assert len(by_path) == 8
        for first, retry in by_path.values():
            assert first.status == 429 and retry.status == 200
            name, value = header(int(first.path[-1]))
            assert first.retry_after == (float(value) if name == "retry-after" else float(value) / 1000)
            assert retry.at - first.at >= first.retry_after
        if throttle is not None:
            stats = throttle.statistics()
            assert (stats.throttled, stats.attempts, stats.failed) == (8, 16, 0)

    async def test_Throttle_pauses_every_user_for_a_429(self) -> None:
        """After a 429 with Retry-After 300 ms, no request of any item reaches the server for 300 ms,
        except the one already in flight."""
        first: list[str] = []

        def respond(path: str, arrival: float) -> Reply:
            if not first:
                first.append(path)
                return Reply(429, (("retry-after-ms", "300"),))
            return Reply(200, (), 0.05, b'{"item": %s}' % path.rsplit("/", 1)[-1].encode())

        async with serving(respond) as api, httpx.AsyncClient(base_url=api.url) as client:
            throttle = trioflow.Throttle(max_concurrency=2)
            shared: dict[str, Any] = {"n": 6}
            with trio.fail_after(10):
                await Fetch(max_concurrency=6, throttle=throttle, params={"client": client}).run(shared)
        assert shared["results"] == list(range(6))
        arrivals = sorted(api.arrivals, key=lambda a: a.at)
        throttled = next(a for a in arrivals if a.status == 429)
        during = [a for a in arrivals if throttled.at < a.at < throttled.at + 0.3]
        assert len(during) <= 1  # the second attempt of the pair admitted before the 429 came back
        assert len(arrivals) == 7


class TestCancelOverHTTP:
    async def test_cancelling_the_batch_closes_the_connections(self) -> None:
        """Cancel a batch of slow calls in flight: the client closes every connection it had opened
        (the server sees each one end), and nothing is left running."""
        arrived = trio.Event()
        count = 0

        def respond(path: str, arrival: float) -> Reply:
            nonlocal count
            count += 1
            if count == 6:
                arrived.set()
            return Reply(200, (), 60.0, b'{"item": 0}')

        async with serving(respond) as api, httpx.AsyncClient(base_url=api.url) as client:
            node = Fetch(max_concurrency=6, max_retries=3, throttle=trioflow.Throttle(), params={"client": client})
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(node.run, {"n": 20})
                    await arrived.wait()
                    assert api.open_connections == 6
                    nursery.cancel_scope.cancel()
                await api.wait_no_connections()
            assert node.throttle.statistics().in_flight == 0
        assert len(api.arrivals) == 6
