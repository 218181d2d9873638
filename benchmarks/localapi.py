"""A small HTTP/1.1 API server on 127.0.0.1, for the tests and the ``flaky`` benchmark.

h11 on ``trio.serve_tcp``: each request is answered by a policy function,
``respond(path, arrival) -> Reply`` (status, headers, delay), and the server
keeps a log of what arrived and counts its open connections, so a test can
assert on both.  Bounded: it stops after ``max_requests`` requests or when its
caller's cancel scope ends (the tests and benchmarks wrap it in ``fail_after``
or ``move_on_after``).

``python -m benchmarks.localapi flaky --seed 0 --port-file PATH`` serves the
``flaky`` scenario's API in a process of its own (the benchmark starts and
stops it), writing its port to ``PATH`` once it listens.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h11
import trio

#: The flaky API: a request takes 20-200 ms; 10 % answer 429 with Retry-After, 3 % answer 500.
FLAKY_LATENCY = (0.020, 0.200)
FLAKY_THROTTLED = 0.10
FLAKY_FAILED = 0.03
FLAKY_RETRY_AFTER = 1  # seconds, the header's integer form


@dataclass(frozen=True)
class Reply:
    """The answer to one request: its status, extra headers, and how long the server takes."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    body: bytes = b"{}"


@dataclass
class Arrival:
    """One request as the server saw it."""

    path: str
    at: float  # trio.current_time() on arrival
    status: int
    retry_after: float | None  # seconds, for a 429


@dataclass
class LocalAPI:
    """An HTTP server whose answers come from ``respond(path, arrival_time)``."""

    respond: Callable[[str, float], Reply]
    max_requests: int = 1_000_000
    arrivals: list[Arrival] = field(default_factory=list)
    open_connections: int = 0
    port: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 (a free port, told through ``task_status``) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_no_connections(self) -> None:
        """Wait until every connection a client opened is closed."""
        while self.open_connections:
            await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        self._signal()
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    break
                while not isinstance(await _next_event(conn, stream), h11.EndOfMessage):
                    pass  # a body we do not need
                path = event.target.decode()
                if len(self.arrivals) >= self.max_requests:
                    reply = Reply(503, (("connection", "close"),))
                else:
                    reply = self.respond(path, trio.current_time())
                self.arrivals.append(Arrival(path, trio.current_time(), reply.status, _retry_after(reply)))
                if reply.delay and not await _work(stream, conn, reply.delay):
                    break  # the client hung up while the server worked
                headers = [("content-type", "application/json"), ("content-length", str(len(reply.body)))]
                headers += [(k, v) for k, v in reply.headers]
                await _send(conn, stream, h11.Response(status_code=reply.status, headers=headers))
                await _send(conn, stream, h11.Data(data=reply.body))
                await _send(conn, stream, h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass  # the client went away
        finally:
            self.open_connections -= 1
            self._signal()
            await trio.aclose_forcefully(stream)


def _retry_after(reply: Reply) -> float | None:
    """The wait the reply asks for, in seconds (``retry-after-ms`` or ``retry-after``)."""
    headers = dict(reply.headers)
    if "retry-after-ms" in headers:
        return float(headers["retry-after-ms"]) / 1000
    return float(headers["retry-after"]) if "retry-after" in headers else None


async def _work(stream: trio.SocketStream, conn: h11.Connection, seconds: float) -> bool:
    """Take ``seconds`` to answer, watching the client: False if it closed the connection meanwhile."""
    with trio.move_on_after(seconds):
        data = await stream.receive_some(65536)
        if not data:
            return False
        conn.receive_data(data)  # an early next request: h11 keeps it for the next cycle
        await trio.sleep(seconds)  # (the deadline of the scope still applies)
    return True


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


async def _send(
    conn: h11.Connection, stream: trio.SocketStream, event: h11.Response | h11.Data | h11.EndOfMessage
) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


# -- the flaky API -------------------------------------------------------------------


def flaky_plan(seed: int, item: int, attempt: int) -> tuple[int, float]:
    """(status, latency) of the ``attempt``-th request (0-based) for ``item``: the same in every run."""
    rng = random.Random(seed * 1_000_003 + item * 1009 + attempt)
    latency = rng.uniform(*FLAKY_LATENCY)
    draw = rng.random()
    status = 429 if draw < FLAKY_THROTTLED else 500 if draw < FLAKY_THROTTLED + FLAKY_FAILED else 200
    return status, latency


def flaky_responder(seed: int, retry_after: int = FLAKY_RETRY_AFTER) -> Callable[[str, float], Reply]:
    """The policy of the flaky API: ``<prefix>/item/<i>`` answers per :func:`flaky_plan`, the
    attempts of each path counted apart (a client gives each run its own prefix)."""
    seen: dict[str, int] = {}

    def respond(path: str, arrival: float) -> Reply:
        item = int(path.rsplit("/", 1)[-1])
        attempt = seen.get(path, 0)
        seen[path] = attempt + 1
        status, latency = flaky_plan(seed, item, attempt)
        headers = (("retry-after", str(retry_after)),) if status == 429 else ()
        body = b'{"item": %d}' % item if status == 200 else b'{"error": "try again"}'
        return Reply(status, headers, latency, body)

    return respond


def flaky_work(seed: int, n: int, max_attempts: int) -> tuple[float, int]:
    """The seconds of server time all of ``n`` items' attempts take (until each one's 200), and
    the attempts: the ideal keeps every slot busy with exactly this work."""
    busy, attempts = 0.0, 0
    for item in range(n):
        for attempt in range(max_attempts):
            status, latency = flaky_plan(seed, item, attempt)
            busy += latency
            attempts += 1
            if status == 200:
                break
    return busy, attempts


def flaky_schedule(
    seed: int, n: int, slots: int, max_attempts: int, wait: float, backoff: float, retry_after: int = FLAKY_RETRY_AFTER
) -> float:
    """The makespan of a perfect pool on the flaky API: no overhead at all, ``slots`` attempts at
    once, a waiting item holding no slot, a retry whose wait is over served before a new item.

    The floor of any real run: it cannot hide the Retry-After of the last items' 429s.
    """
    free_at = [0.0] * slots  # a heap of the times the slots come free
    retries: list[tuple[float, int, int]] = []  # a heap of (ready at, item, attempt)
    new = iter(range(n))
    pending_new = n
    end = 0.0
    while pending_new or retries:
        now = heapq.heappop(free_at)
        if retries and retries[0][0] <= now:
            at, item, attempt = heapq.heappop(retries)
        elif pending_new:
            at, item, attempt = now, next(new), 0
            pending_new -= 1
        else:
            at, item, attempt = heapq.heappop(retries)
        start = max(at, now)
        status, latency = flaky_plan(seed, item, attempt)
        done = start + latency
        heapq.heappush(free_at, done)
        end = max(end, done)
        if status != 200 and attempt + 1 < max_attempts:
            pause = float(retry_after) if status == 429 else wait * backoff**attempt
            heapq.heappush(retries, (done + pause, item, attempt + 1))
    return end


async def _serve_flaky(seed: int, retry_after: int, port_file: Path, max_requests: int, seconds: float) -> None:
    api = LocalAPI(flaky_responder(seed, retry_after), max_requests=max_requests)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(api.serve)
            await trio.Path(port_file).write_text(str(port))
            await trio.sleep(math.inf)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.localapi", description=__doc__.splitlines()[0])
    parser.add_argument("api", choices=["flaky"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=int, default=FLAKY_RETRY_AFTER, help="seconds, in each 429")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=900.0, help="stop after this long, whatever happens")
    args = parser.parse_args(argv)
    trio.run(_serve_flaky, args.seed, args.retry_after, args.port_file, args.max_requests, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
