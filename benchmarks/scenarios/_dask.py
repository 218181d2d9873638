"""A Dask ``LocalCluster`` and its client, for the benchmarks and the tests (a helper, not a scenario)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

#: The scheduler's web server (dashboard, /metrics) on a free loopback port: with None it takes
#: port 8787 (its default, and busy when another cluster runs), and it never leaves loopback.
LOOPBACK = "127.0.0.1:0"


@contextlib.contextmanager
def plain_asyncio_loops() -> Iterator[None]:
    """While inside, ``asyncio.new_event_loop`` builds plain asyncio loops, even if trio-asyncio is imported.

    trio-asyncio (``adapters.aio``; the test suite imports it at collection) replaces
    ``asyncio.new_event_loop`` process-wide with one that builds trio-asyncio loops,
    which the event-loop thread of a Dask client or cluster cannot run.  Dask makes
    that loop when the cluster and the client start, so starting them in here is enough.
    """
    patched = asyncio.events.new_event_loop

    def new_event_loop() -> asyncio.AbstractEventLoop:
        return asyncio.DefaultEventLoopPolicy().new_event_loop()

    asyncio.events.new_event_loop = asyncio.new_event_loop = new_event_loop
    try:
        yield
    finally:
        asyncio.events.new_event_loop = asyncio.new_event_loop = patched


@contextlib.contextmanager
def local_cluster(workers: int = 2, *, processes: bool = True, **options: Any) -> Iterator[Any]:
    """A ``LocalCluster`` of ``workers`` single-threaded workers (processes, or threads) and a client of it.

    Its web server is on a free loopback port; both are closed on exit.  ``options``
    go to ``LocalCluster`` (``scheduler_kwargs={"dashboard": False}``, say).
    """
    from distributed import Client, LocalCluster

    with plain_asyncio_loops():
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=LOOPBACK, **options
        )
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
    with cluster, client:
        yield client
