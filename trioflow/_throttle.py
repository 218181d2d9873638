"""Throttle: limits the way LLM APIs enforce them (the admit stage of a batch).

A :class:`Throttle` is a shareable gate, one per API provider, that every
*attempt* of the nodes and ``parallel_map`` runs given it passes through: it
bounds attempts in flight, spaces their starts (a fixed or an adaptive rate),
keeps a weighted budget per minute, and, when the provider throttles an
attempt, pauses every user at once for the provider's Retry-After.

This module also holds the readers of a provider's throttling answer that the
retry policy uses without a Throttle: :func:`is_throttle_error` and
:func:`retry_after_of`.  They understand the exception shapes of the clients
people use (httpx, aiohttp, the openai and anthropic SDKs, anything with a
``status_code``/``status`` or ``retry_after`` attribute) without importing any.
"""

from __future__ import annotations

import contextvars
import email.utils
import inspect
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from . import _instrument

__all__ = ["Throttle", "ThrottleStatistics", "is_throttle_error", "report_usage", "retry_after_of"]

#: HTTP statuses that mean "slow down": too many requests, unavailable, overloaded (Anthropic).
THROTTLE_STATUSES = frozenset({429, 503, 529})

#: Error codes of a quota that is used up: waiting will not help, so not a throttle.
QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached", "quota_exceeded")


def _int_status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries: ``exc.status_code``, ``exc.status``, or its ``response``'s."""
    for holder in (exc, getattr(exc, "response", None)):
        if holder is None:
            continue
        for attr in ("status_code", "status"):
            status = _int_status(getattr(holder, attr, None))
            if status is not None:
                return status
    return None


def headers_of(exc: BaseException) -> Mapping[str, str] | None:
    """The response headers an exception carries (``exc.headers`` or ``exc.response.headers``)."""
    for holder in (exc, getattr(exc, "response", None)):
        headers = getattr(holder, "headers", None) if holder is not None else None
        if headers is not None and hasattr(headers, "get"):
            return headers  # type: ignore[no-any-return]
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    return None if value is None else str(value)


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if hasattr(value, "total_seconds"):  # a timedelta
        return _seconds(value.total_seconds())
    return None


def retry_after_of(exc: BaseException) -> float | None:
    """The wait in seconds a provider asked for in ``exc``, or None when it asked for none.

    Reads, in order: a ``retry-after-ms`` header (OpenAI, Anthropic), a
    ``retry-after`` header in seconds or as an HTTP date, then an
    ``exc.retry_after`` attribute (seconds or a timedelta).
    """
    headers = headers_of(exc)
    if headers is not None:
        ms = _header(headers, "retry-after-ms")
        if ms is not None:
            try:
                got = _seconds(float(ms) / 1000)
            except ValueError:
                got = None
            if got is not None:
                return got
        after = _header(headers, "retry-after")
        if after is not None:
            try:
                got = _seconds(float(after))
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(after)
                except (TypeError, ValueError, IndexError):
                    when = None
                got = None if when is None else max(0.0, when.timestamp() - time.time())
            if got is not None:
                return got
    return _seconds(getattr(exc, "retry_after", None))


def _plain_attr(exc: BaseException, name: str) -> Any:
    """``exc.<name>`` if it is plain data held by the exception or its class, else None.

    Never runs a property: aiohttp's ``ClientResponseError.code`` is one, and
    reading it warns that it is deprecated.
    """
    value = inspect.getattr_static(exc, name, None)
    return value if isinstance(value, (str, Mapping, list, tuple)) else None


def _is_quota_error(exc: BaseException) -> bool:
    values = [_plain_attr(exc, name) for name in ("code", "type", "error_code", "body")]
    for value in (*values, str(exc)):
        text = value if isinstance(value, str) else repr(value) if value is not None else ""
        if any(code in text for code in QUOTA_CODES):
            return True
    return False


def is_throttle_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the provider is throttling (slow down and try again).

    True for an HTTP 429, 503 or 529 status (on ``exc.status_code``,
    ``exc.status`` or ``exc.response.status_code``) or an ``exc.retry_after``
    attribute; False for a quota that is used up (``insufficient_quota``):
    waiting does not help there.
    """
    if not isinstance(exc, Exception):
        return False
    status = status_of(exc)
    if status in THROTTLE_STATUSES or _seconds(getattr(exc, "retry_after", None)) is not None:
        return not _is_quota_error(exc)
    return False


# -- the Throttle ------------------------------------------------------------------

#: The adaptive rate's start, in attempts per second, when ``requests_per_second`` is not given.
DEFAULT_START_RATE = 10.0
#: Slow start: seconds of rate-bound running for the adaptive rate to double (before the first throttle).
DOUBLING_TIME = 1.0
#: The multiplicative cut on a throttle (CUBIC's beta).
CUT = 0.7
#: CUBIC's C, scale-free: after a cut the rate is ``w_max * (1 + GROWTH * (t - K)**3)``.
GROWTH = 0.02
#: On a cut, the provider's rate is estimated as the attempts it accepted in this many seconds.
ACCEPTED_WINDOW = 2.0
#: ... or as long as it takes this many attempts at the current rate, up to MAX_ACCEPTED_WINDOW seconds.
ACCEPTED_COUNT = 10
MAX_ACCEPTED_WINDOW = 60.0
#: Two cuts are at least this many seconds apart.
MIN_CUT_INTERVAL = 1.0
#: A waiter held by a slow adaptive rate looks again this often (seconds), as the rate grows.
GROWTH_TICK = 0.25
#: The adaptive rate never goes below this (one attempt per 100 s).
MIN_RATE = 0.01
#: The cool-down after a throttle whose provider said nothing about when to come back.
DEFAULT_COOL_DOWN = 1.0
#: The shared cool-down is the provider's Retry-After plus a uniform 0 to this share of it.
COOL_DOWN_JITTER = 0.10
#: The window of ``tokens_per_minute``, in seconds.
TOKEN_WINDOW = 60.0
#: ``rate_changed`` is emitted on every cut, and on growth once the rate moved this share.
RATE_REPORT_STEP = 0.05

#: The Throttle ticket of the attempt running in this task (for :func:`report_usage`).
current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("trioflow_ticket", default=None)


@attrs.frozen
class ThrottleStatistics:
    """What a :class:`Throttle` is doing, as plain numbers (see :meth:`Throttle.statistics`).

    Attributes:
        rate: the attempts per second it admits now (adaptive: its current
            estimate of the provider's rate); None without a rate.
        max_concurrency: the most attempts in flight (None: no bound).
        in_flight: attempts admitted and not yet ended.
        tasks_waiting: attempts waiting to be admitted.
        tokens_per_minute: the weighted budget (None: none).
        tokens_used: the weight admitted in the last minute (an attempt's
            reported usage where it reported one, else its ``cost``).
        attempts: attempts admitted since the Throttle was made.
        throttled: attempts the provider throttled.
        failed: attempts that failed otherwise.
        cool_downs: shared pauses started (a throttle during one extends it).
        cool_down_left: seconds left of the current cool-down (0: none running).
        cuts: times the adaptive rate was cut.
    """

    rate: float | None
    max_concurrency: int | None
    in_flight: int
    tasks_waiting: int
    tokens_per_minute: float | None
    tokens_used: float
    attempts: int
    throttled: int
    failed: int
    cool_downs: int
    cool_down_left: float
    cuts: int


class Ticket:
    """One admitted attempt: when it started, its weight, the usage it reported."""

    __slots__ = ("cost", "entry", "run", "started", "throttled", "used")

    def __init__(self, started: float, cost: float, entry: list[float] | None, run: object) -> None:
        self.run = run  # the Trio run it was admitted in
        self.started = started
        self.cost = cost
        self.entry = entry  # [start, weight] in the token window, or None
        self.used: float | None = None
        self.throttled = False

    def __repr__(self) -> str:
        return f"<Ticket started={self.started:g} cost={self.cost:g} used={self.used!r}>"


def _check_number(name: str, value: Any, *, integer: bool = False) -> None:
    if value is None:
        return
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Throttle: {name} must be an int >= 1 or None, not {value!r}")
    elif (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value)
    ):
        raise ValueError(f"Throttle: {name} must be a finite number > 0 or None, not {value!r}")


def _weight(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise TypeError(f"Throttle: {what} must be a finite number >= 0, not {value!r}")
    return float(value)


class Throttle:
    """An admission gate shared by every node that calls one API provider.

    Give one Throttle to every node, batch flow and ``parallel_map`` run that
    talks to the same provider (``throttle=``): each *attempt* of their
    ``exec`` passes through it, retries included, so the provider sees one
    well-behaved client however many nodes there are.

    - ``max_concurrency`` bounds the attempts in flight.
    - ``requests_per_second`` spaces attempt starts ``1 / rate`` apart (no
      bursts).  A start time is decided when a waiter's turn comes, never
      booked ahead, so a cancelled waiter leaves no hole and a rate change
      applies at once.
    - ``tokens_per_minute`` is a weighted budget: an attempt of ``item``
      weighs ``node.cost(item)`` (default 1; for an LLM call, an estimate of
      its tokens), and the weights started in any 60 seconds never add up to
      more.  Inside ``exec``, ``self.report_usage(tokens)`` replaces the
      estimate by what the API billed.
    - ``adaptive=True`` finds the provider's rate by itself, starting at
      ``requests_per_second`` (default 10 per second): it doubles every
      second until the first throttle (slow start).  On a throttle (at most
      one cut a second, and none for attempts started before the last cut)
      it estimates the provider's rate from what the provider accepted in
      the last seconds (a provider's burst lets a faster rate through for a
      while, so the rate at the first 429 overshoots), cuts to 0.7x of that
      estimate and grows back along a cubic curve, slowly near the estimate
      and faster beyond it (CUBIC, as TCP does).  It grows only while
      attempts wait for it: while your app is the bottleneck, the rate
      holds.  At a rate too low for 10 attempts a second its clock runs
      per 10 attempts rather than per second.  Failures that are not
      throttles never change it.  A second Trio run keeps the rate learned.

    A throttled attempt (``is_throttle(exc)``; by default an HTTP 429, 503
    or 529 from httpx, aiohttp, the openai or anthropic SDKs, or any
    exception with ``status_code``/``retry_after``) is not a failure: it does
    not count against ``max_retries``.  It starts one cool-down shared by
    every user of the Throttle, the provider's Retry-After (``retry_after(exc)``;
    by default the ``retry-after-ms`` or ``retry-after`` header; 1 s if the
    provider said nothing) plus 0-10 % jitter, during which no attempt
    starts; then the attempt is made again.  A node's ``max_throttle_wait``
    bounds the time one item spends throttled.

    Like ``trio.CapacityLimiter`` it is a small object: it may be made
    outside a Trio run (at import time) and shared by the nodes of a run, and
    of the runs after it, one at a time; ``acquire`` and
    ``release`` are what the engine calls (``admit`` wraps them for your own
    code); :meth:`statistics` tells what it is doing.  It emits the
    ``rate_changed`` instrument event when the adaptive rate moves.

    Args:
        max_concurrency: the most attempts in flight (None: no bound).
        requests_per_second: the spacing of attempt starts, or the adaptive
            rate's start (None: no rate, or 10 per second when adaptive).
        tokens_per_minute: the weighted budget per minute (None: none).
        adaptive: find the provider's rate from its throttles.
        is_throttle: ``exc -> bool``, whether an attempt's exception is a
            throttle (default :func:`is_throttle_error`).
        retry_after: ``exc -> seconds or None``, the provider's Retry-After
            (default :func:`retry_after_of`).

    Raises:
        ValueError: a limit that is not a positive number.

    Example::

        openai = trioflow.Throttle(tokens_per_minute=90_000, adaptive=True)

        class Summarize(trioflow.ParallelBatchNode):
            def cost(self, doc):
                return len(doc) / 4 + 500  # prompt tokens + max_tokens

            async def exec(self, doc):
                reply = await client.chat.completions.create(...)
                self.report_usage(reply.usage.total_tokens)
                return reply.choices[0].message.content

        summarize = Summarize(max_concurrency=64, throttle=openai)
        translate = Translate(max_concurrency=64, throttle=openai)  # the same provider
        ...
        print(openai.statistics().rate)
    """

    __slots__ = (
        "_adaptive",
        "_attempts",
        "_base",
        "_cool_downs",
        "_cool_until",
        "_credit",
        "_cuts",
        "_failed",
        "_in_flight",
        "_is_throttle",
        "_k",
        "_last_cut",
        "_last_start",
        "_lock",
        "_lot",
        "_max_concurrency",
        "_rate",
        "_recent",
        "_reported",
        "_retry_after",
        "_run",
        "_slow_start",
        "_throttled",
        "_tokens_per_minute",
        "_used",
        "_w_max",
        "_waiting",
        "_window",
    )

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        requests_per_second: float | None = None,
        tokens_per_minute: float | None = None,
        adaptive: bool = False,
        is_throttle: Callable[[BaseException], bool] | None = None,
        retry_after: Callable[[BaseException], float | None] | None = None,
    ) -> None:
        _check_number("max_concurrency", max_concurrency, integer=True)
        _check_number("requests_per_second", requests_per_second)
        _check_number("tokens_per_minute", tokens_per_minute)
        if not isinstance(adaptive, bool):
            raise TypeError(f"Throttle: adaptive must be True or False, not {adaptive!r}")
        for name, fn in (("is_throttle", is_throttle), ("retry_after", retry_after)):
            if fn is not None and not callable(fn):
                raise TypeError(f"Throttle: {name} must be a function of the exception, not {fn!r}")
        self._max_concurrency = max_concurrency
        self._tokens_per_minute = None if tokens_per_minute is None else float(tokens_per_minute)
        self._adaptive = adaptive
        self._is_throttle = is_throttle_error if is_throttle is None else is_throttle
        self._retry_after = retry_after_of if retry_after is None else retry_after
        self._lock = trio.Lock()  # FIFO: the waiter at its head decides when it starts
        self._lot = trio.lowlevel.ParkingLot()  # where the head waits for a change (a release, a cut)
        self._in_flight = 0
        self._waiting = 0
        self._last_start = -math.inf
        self._cool_until = -math.inf
        self._window: deque[list[float]] = deque()  # [start, weight] of the last minute's attempts
        self._used = 0.0  # the sum of the window's weights
        self._attempts = self._throttled = self._failed = self._cool_downs = self._cuts = 0
        # The rate: fixed, or the adaptive controller's state (an epoch starts at each cut).
        start = requests_per_second if requests_per_second is not None else DEFAULT_START_RATE
        self._rate: float | None = float(start) if requests_per_second is not None or adaptive else None
        self._base = self._rate or 0.0  # the rate at the epoch's start
        self._credit = 0.0  # seconds of the epoch spent waiting for the rate (its growth clock)
        self._slow_start = True
        self._w_max = 0.0  # the rate at the last cut (CUBIC's W_max)
        self._k = 0.0  # seconds of growth until the rate is back at w_max
        self._last_cut = -math.inf
        self._recent: deque[Ticket] = deque()  # the attempts of the last ACCEPTED_WINDOW seconds
        self._reported = self._rate
        self._run: object = None  # the Trio run whose clock the times above are on

    def _same_run(self) -> None:
        """Forget the times of an earlier Trio run (a Throttle made at import time may serve
        several ``trioflow.run`` calls, and each run's clock has an origin of its own); what the
        adaptive rate learned is a rate, not a time, and is kept."""
        run = trio.lowlevel.current_trio_token()
        if run is self._run:
            return
        self._run = run
        self._last_start = self._cool_until = self._last_cut = -math.inf
        self._window.clear()
        self._used = 0.0
        self._recent.clear()

    def __repr__(self) -> str:
        parts = []
        if self._max_concurrency is not None:
            parts.append(f"max_concurrency={self._max_concurrency}")
        if self._rate is not None:
            parts.append(f"rate={self._rate:.3g}/s")
        if self._tokens_per_minute is not None:
            parts.append(f"tokens_per_minute={self._tokens_per_minute:g}")
        if self._adaptive:
            parts.append("adaptive")
        return f"<trioflow.Throttle {' '.join(parts) or 'unlimited'}, {self._in_flight} in flight>"

    # -- what a throttle is ---------------------------------------------------

    def is_throttle(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by an attempt, means the provider throttled it."""
        return isinstance(exc, Exception) and bool(self._is_throttle(exc))

    def retry_after(self, exc: BaseException) -> float | None:
        """The wait in seconds the provider asked for in ``exc``, or None."""
        return self._retry_after(exc)

    # -- admission ----------------------------------------------------------------

    async def acquire(self, cost: float = 1) -> Ticket:
        """Wait until one more attempt of weight ``cost`` may start; return its ticket.

        Waiters are admitted first come, first served.  Give the ticket back
        with :meth:`release` once the attempt ended, whatever happened (in a
        ``finally``); :meth:`admit` does both.

        Raises:
            TypeError: ``cost`` is not a number >= 0.
            ValueError: ``cost`` exceeds ``tokens_per_minute`` (it could never start).
        """
        cost = _weight(cost, "an attempt's cost (Node.cost)")
        if self._tokens_per_minute is not None and cost > self._tokens_per_minute:
            raise ValueError(
                f"Throttle: an attempt of cost {cost:g} can never start under tokens_per_minute="
                f"{self._tokens_per_minute:g}; lower the node's cost() or raise the budget"
            )
        self._same_run()
        self._waiting += 1
        try:
            async with self._lock:
                while True:
                    now = trio.current_time()
                    start, rate_bound = self._next_start(now, cost)
                    if start <= now:
                        break
                    if rate_bound and self._adaptive:  # look again soon: the rate grows meanwhile
                        start = min(start, now + GROWTH_TICK)
                    with trio.move_on_at(start):
                        await self._lot.park()
                    if rate_bound:  # waited for the rate alone: the rate is what holds the app back
                        self._grow(min(trio.current_time(), start) - now)
                return self._admit(now, cost)
        finally:
            self._waiting -= 1

    def release(self, ticket: Ticket, outcome: str = "ok", error: BaseException | None = None) -> float | None:
        """Give back ``ticket``, saying how its attempt ended.

        Args:
            ticket: what :meth:`acquire` returned.
            outcome: ``"ok"``, ``"throttled"`` (the provider throttled it),
                ``"failed"`` or ``"cancelled"``.
            error: the attempt's exception, for ``"throttled"`` and ``"failed"``.

        Returns:
            For ``"throttled"``: the seconds until the shared cool-down it
            started (or extended) ends; None otherwise.
        """
        self._in_flight -= 1
        entry = ticket.entry
        if ticket.used is not None and entry is not None and ticket.run is self._run:
            # Reported usage replaces the estimate, unless the entry left the window already.
            if entry[0] + TOKEN_WINDOW > trio.current_time():
                self._used += ticket.used - entry[1]
                entry[1] = ticket.used
            ticket.entry = None
        pause: float | None = None
        if outcome == "throttled":
            ticket.throttled = True
            self._throttled += 1
            pause = self._cool_down(error)
            if self._adaptive:
                self._maybe_cut(ticket)
        elif outcome == "failed":
            self._failed += 1
        self._lot.unpark_all()
        return pause

    @asynccontextmanager
    async def admit(self, cost: float = 1) -> AsyncIterator[Ticket]:
        """``async with throttle.admit(cost):`` runs one attempt of your own code under the Throttle.

        The block's exception tells how the attempt ended (a throttle per
        :meth:`is_throttle` starts the cool-down; it is re-raised: retrying is
        yours).  Inside the block :func:`report_usage` reconciles ``cost``.

        Example::

            async with throttle.admit(cost=1200):
                reply = await client.post(url, json=body)
                reply.raise_for_status()
        """
        ticket = await self.acquire(cost)
        token = current_ticket.set(ticket)
        try:
            yield ticket
        except Exception as exc:
            self.release(ticket, "throttled" if self.is_throttle(exc) else "failed", exc)
            raise
        except BaseException:
            self.release(ticket, "cancelled")
            raise
        else:
            self.release(ticket, "ok")
        finally:
            current_ticket.reset(token)

    def statistics(self) -> ThrottleStatistics:
        """What the Throttle is doing now, as a :class:`ThrottleStatistics` of plain numbers.

        Example::

            >>> stats = throttle.statistics()
            >>> print(f"rate {stats.rate:.0f}/s, {stats.in_flight} in flight, throttled {stats.throttled}")
        """
        try:
            now = trio.current_time()
        except RuntimeError:  # outside a Trio run: nothing runs, nothing cools down
            now = None
        if now is not None:
            self._same_run()
            self._expire(now)
        return ThrottleStatistics(
            rate=self._rate,
            max_concurrency=self._max_concurrency,
            in_flight=self._in_flight,
            tasks_waiting=self._waiting,
            tokens_per_minute=self._tokens_per_minute,
            tokens_used=self._used if self._tokens_per_minute is not None else 0.0,
            attempts=self._attempts,
            throttled=self._throttled,
            failed=self._failed,
            cool_downs=self._cool_downs,
            cool_down_left=max(0.0, self._cool_until - now) if now is not None else 0.0,
            cuts=self._cuts,
        )

    # -- the head waiter's decision -------------------------------------------------

    def _next_start(self, now: float, cost: float) -> tuple[float, bool]:
        """The earliest time an attempt of ``cost`` may start, seen from ``now``, and whether
        the rate is what sets it (inf: when an attempt in flight ends)."""
        start = now
        if self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
            start = math.inf
        start = max(start, self._cool_until)
        if self._tokens_per_minute is not None:
            self._expire(now)
            excess = self._used + cost - self._tokens_per_minute
            if excess > 1e-9:
                for entry_start, weight in self._window:  # the oldest go first
                    excess -= weight
                    if excess <= 1e-9:
                        start = max(start, entry_start + TOKEN_WINDOW)
                        break
        if self._rate is not None:
            paced = self._last_start + 1.0 / self._rate
            if paced > start:
                return paced, True
        return start, False

    def _expire(self, now: float) -> None:
        window = self._window
        while window and window[0][0] + TOKEN_WINDOW <= now:  # the same sum as in _next_start
            self._used -= window.popleft()[1]
        if not window:
            self._used = 0.0  # no float drift once the window empties

    def _admit(self, now: float, cost: float) -> Ticket:
        self._in_flight += 1
        self._attempts += 1
        self._last_start = now
        entry = None
        if self._tokens_per_minute is not None:
            entry = [now, cost]
            self._window.append(entry)
            self._used += cost
        ticket = Ticket(now, cost, entry, self._run)
        if self._adaptive:
            self._forget(now)
            self._recent.append(ticket)
        return ticket

    def _accepted_window(self) -> float:
        """The seconds over which a cut counts the attempts the provider accepted: long enough
        to hold :data:`ACCEPTED_COUNT` of them at the current rate."""
        assert self._rate is not None
        return min(MAX_ACCEPTED_WINDOW, max(ACCEPTED_WINDOW, ACCEPTED_COUNT / self._rate))

    def _forget(self, now: float) -> None:
        recent, oldest = self._recent, now - self._accepted_window()
        while recent and recent[0].started <= oldest:
            recent.popleft()

    # -- throttles and the adaptive rate ----------------------------------------------

    def _cool_down(self, error: BaseException | None) -> float:
        """Start (or extend) the shared cool-down for a throttle; its seconds left."""
        now = trio.current_time()
        after = self._retry_after(error) if error is not None else None
        if after is None or not after >= 0 or not math.isfinite(after):
            after = DEFAULT_COOL_DOWN
        until = now + after * (1 + random.uniform(0, COOL_DOWN_JITTER))
        if until > max(self._cool_until, now):
            if self._cool_until <= now:
                self._cool_downs += 1
            self._cool_until = until
        return max(0.0, self._cool_until - now)

    def _maybe_cut(self, ticket: Ticket) -> None:
        """Cut the adaptive rate for a throttle: once a second at most, and not again for the
        attempts that started before the last cut (they went out at the old rate).

        The rate the provider allows is estimated from what it accepted lately
        (the attempts started in the last :data:`ACCEPTED_WINDOW` seconds that
        it did not throttle; a 429 comes back fast, so the unknown rest were
        accepted): a provider's burst lets a rate well above its own through
        for a while, so the rate at the first 429 overshoots it.  The rate is
        cut below that estimate and grows back towards it (CUBIC's W_max).
        """
        now = trio.current_time()
        if ticket.started < self._last_cut or now - self._last_cut < MIN_CUT_INTERVAL:
            return
        assert self._rate is not None
        window = self._accepted_window()
        self._forget(now)
        accepted = sum(1 for t in self._recent if not t.throttled) / window
        self._w_max = max(MIN_RATE, min(self._rate, max(accepted, self._rate * CUT)))
        self._base = max(MIN_RATE, self._w_max * CUT)
        self._k = math.cbrt(max(0.0, 1 - self._base / self._w_max) / GROWTH)
        self._slow_start = False
        self._credit = 0.0
        self._last_cut = now
        self._cuts += 1
        self._set_rate(self._base, force=True)

    def _grow(self, seconds: float) -> None:
        """Advance the adaptive rate's growth clock by ``seconds`` spent waiting for the rate."""
        if not self._adaptive or seconds <= 0:
            return
        assert self._rate is not None
        # The clock runs in seconds, slower at a rate too low for ACCEPTED_COUNT attempts a
        # second: the rate then grows per attempts seen, not faster than it can learn.
        self._credit += seconds / max(1.0, ACCEPTED_COUNT / self._rate)
        if self._slow_start:
            rate = self._base * 2 ** (self._credit / DOUBLING_TIME)
        else:
            rate = self._w_max * (1 + GROWTH * (self._credit - self._k) ** 3)
        self._set_rate(max(MIN_RATE, rate))

    def _set_rate(self, rate: float, *, force: bool = False) -> None:
        self._rate = rate
        reported = self._reported
        if force or reported is None or abs(rate - reported) >= RATE_REPORT_STEP * reported:
            self._reported = rate
            attached = _instrument.current()
            if attached is not None:
                attached.emit("rate_changed", self, rate)


def report_usage(tokens: float) -> None:
    """Tell the Throttle of the running attempt its real weight (e.g. the tokens the API billed).

    It replaces the attempt's ``cost`` in the ``tokens_per_minute`` budget when
    the attempt ends.  Outside an attempt under a Throttle it does nothing, so
    a node may call it whether or not it was given a Throttle.

    Raises:
        TypeError: ``tokens`` is not a number >= 0.
    """
    tokens = _weight(tokens, "report_usage's tokens")
    ticket = current_ticket.get()
    if ticket is not None:
        ticket.used = tokens
