"""An item's life in a batch, after it is pulled: the stages the pool calls.

::

    pull item ─► done before? (store) ─► admit attempt (node cap, limiter, rate, Throttle)
              ─► run exec (inline | thread | process | Dask) ─► record (result slot, store, instruments)
              └─ failure ─► throttled? shared cool-down, retry (not counted)
                            else retry policy (backoff with the admission released) ─► fallback

The pool (:mod:`._parallel`) pulls items and owns the result slots; the
sequential batch kinds loop over their items themselves.  Both hand each item
to an :class:`ItemRunner`, built once per batch, which knows what an item of
that batch needs (decided once, not re-checked per item): a store lookup or
not, which admissions, which executor, which instruments.  Every stage is a
small object of its own module; the runner calls them and owns nothing of theirs:

- done before?  a :class:`Recorder` (the store of a durable run);
- admit         an :class:`Admission` (this module): the pool's own cap on
                attempts in flight, a shared ``trio.CapacityLimiter``, a rate, a ``Throttle``;
- run           ``exec`` inline, or an executor's (:mod:`trioflow.executors`);
- record        the caller's ``record(index, value)`` (a result slot), then the
                store and the instruments.

:func:`attempts` is the one retry core: a plain :class:`Node`, both batch kinds,
the pool and ``parallel_map`` all go through it.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import random
from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Protocol

import trio

from . import _instrument
from ._throttle import current_ticket

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["MISSING", "Admission", "Hold", "ItemRunner", "Pending", "Rate", "Recorder", "attempts"]

#: What a :class:`Recorder` returns for an item it has no result for.
MISSING: Any = object()

#: The 0-based attempt of the exec call running in this task.  A context
#: variable, so every item of a parallel batch sees its own attempt.
attempt_var: contextvars.ContextVar[int] = contextvars.ContextVar("trioflow_attempt", default=0)

#: The longest wait the retry policy computes, in seconds (one day): beyond it
#: ``wait * backoff**attempt`` is capped rather than overflowing.
MAX_POLICY_WAIT = 86_400.0


def is_awaitable(value: Any) -> bool:
    """Whether a user method's return value must be awaited (``async def`` or an awaitable)."""
    return type(value) is CoroutineType or inspect.isawaitable(value)


# -- done before? ----------------------------------------------------------------


class Recorder(Protocol):
    """The store's side of one batch (:class:`trioflow._durable.Recorder`): results recorded by an
    earlier run, and the record of new ones.  ``lookup`` computes the item's key once; the
    other calls refer to the item by its index."""

    def lookup(self, index: int, item: Any) -> Any:
        """The recorded result of ``item`` (at ``index``), :data:`MISSING` (compute it), or a
        :class:`Pending` (the same item is being computed by another index of the batch)."""

    def record(self, index: int, item: Any, value: Any) -> None:
        """Keep the result of ``item``; must not block (the store writes it later)."""

    def settle(self, index: int, error: BaseException | None, token: Any = None) -> None:
        """Item ``index`` is over: failed with ``error``, cancelled, or (None) done (recorded, or
        its fallback's value stood in); ``token``: what :meth:`enter` returned for it, if called."""

    def replayed(self) -> bool:
        """Count a replayed item; True when the batch should yield to Trio (now and then)."""

    def enter(self, index: int) -> Any:
        """Param set ``index`` of a batch flow starts its sub-run; returns a token for :meth:`settle`."""

    def backlogged(self) -> bool:
        """Whether the store is so far behind that a new item should wait (:meth:`wait_for_room`)."""

    async def wait_for_room(self) -> None:
        """Wait until the store has caught up."""

    def finished(self) -> None:
        """The batch went through all its items."""

    def wrap(self, call: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``call`` with the done-before? and record stages around it, for an item that needs
        nothing else (no retry policy, no executor, no instrument): an ``async def`` function
        of the item that the pool's fast path can await."""


class Pending:
    """A result not at hand: an item whose key is being computed by another item of its batch
    (or, for the store's subclass, one to read back from the store).

    ``await pending.wait()`` returns the result, or :data:`MISSING` if the
    other item failed (then this one runs for itself).
    """

    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = MISSING

    def set(self, value: Any) -> None:
        self.value = value
        self.event.set()

    async def wait(self) -> Any:
        await self.event.wait()
        return self.value


# -- admit -----------------------------------------------------------------------


class Rate:
    """Spaces attempt starts ``1 / per_second`` apart, without bursts.

    A start time is decided when a waiter's turn comes (waiters queue on a
    FIFO lock), never committed ahead: a cancelled waiter leaves no hole, and a
    start is never earlier than ``interval`` after the previous one.
    """

    __slots__ = ("interval", "last", "lock")

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.last = -math.inf
        self.lock = trio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            start = self.last + self.interval
            if start > trio.current_time():
                await trio.sleep_until(start)
            else:
                await trio.lowlevel.checkpoint()
            self.last = trio.current_time()


class Hold:
    """What one item holds right now; also the borrower of its limiter tokens.

    ``slot``: a place in its batch's cap on attempts in flight; ``token``: a
    token of the shared limiter; ``ticket``: the Throttle's admission of the
    running attempt.  :meth:`Admission.release` gives back all of it, so the
    pool calls it in a ``finally`` for every item: no cancel can leak a token.
    """

    __slots__ = ("slot", "ticket", "token")

    def __init__(self) -> None:
        self.slot = False
        self.token = False
        self.ticket: Any = None


class Admission:
    """The admit stage of one batch: what an attempt holds while it runs.

    Args:
        slots: the batch's own cap on attempts in flight, when an item can give
            its place back between attempts (it may be retried); None when each
            worker task is a place (one attempt per item).
        limiter: a ``trio.CapacityLimiter`` shared with other batches.
        rate: spacing of attempt starts (``max_per_second``).
        throttle: a :class:`trioflow.Throttle` shared with other batches.

    The parts are taken in that order (local before shared, so a batch never
    holds a shared token while it waits for its own cap; the rate last, so a
    wait for a token cannot bunch up the starts) and given back together.
    """

    __slots__ = ("limiter", "rate", "slots", "throttle")

    def __init__(
        self,
        *,
        slots: trio.CapacityLimiter | None = None,
        limiter: trio.CapacityLimiter | None = None,
        rate: Rate | None = None,
        throttle: Any = None,
    ) -> None:
        self.slots = slots
        self.limiter = limiter
        self.rate = rate
        self.throttle = throttle

    def __bool__(self) -> bool:
        return not (self.slots is None and self.limiter is None and self.rate is None and self.throttle is None)

    async def enter(self, hold: Hold, cost: float) -> None:
        """Wait until one more attempt of ``hold``'s item may start; take what it needs."""
        if self.slots is not None and not hold.slot:
            await self.slots.acquire_on_behalf_of(hold)
            hold.slot = True
        if self.limiter is not None and not hold.token:
            await self.limiter.acquire_on_behalf_of(hold)
            hold.token = True
        if self.throttle is not None:
            hold.ticket = await self.throttle.acquire(cost)
        if self.rate is not None:
            await self.rate.wait()

    def exit(self, hold: Hold, outcome: str = "cancelled", error: BaseException | None = None) -> float:
        """Give back what ``hold`` holds, telling the Throttle how the attempt ended.

        Args:
            outcome: ``"ok"``, ``"throttled"``, ``"failed"`` or ``"cancelled"``
                (an attempt that did not end, or a release after a cancel).
            error: the attempt's exception, for a throttled or failed one.

        Returns:
            The shared cool-down the Throttle started, in seconds (0 if none).
        """
        pause = 0.0
        if hold.ticket is not None:
            ticket, hold.ticket = hold.ticket, None
            pause = self.throttle.release(ticket, outcome, error) or 0.0
        if hold.token:
            hold.token = False
            assert self.limiter is not None
            self.limiter.release_on_behalf_of(hold)
        if hold.slot:
            hold.slot = False
            assert self.slots is not None
            self.slots.release_on_behalf_of(hold)
        return pause


# -- the retry core ----------------------------------------------------------------


def policy_delay(node: Node, attempt: int) -> float:
    """``wait * backoff**attempt`` plus jitter, capped at :data:`MAX_POLICY_WAIT` (never an overflow)."""
    delay = node.wait
    if delay > 0 and node.backoff != 1:
        try:
            delay = min(delay * node.backoff**attempt, MAX_POLICY_WAIT)
        except OverflowError:
            delay = MAX_POLICY_WAIT
    if node.jitter:
        delay += random.uniform(0, node.jitter)
    return delay


def _check_delay(node: Node, delay: Any) -> float:
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0 or math.isnan(delay):
        raise TypeError(
            f"{type(node).__name__}.retry_delay returned {delay!r}; it must return seconds (a number >= 0) or None"
        )
    return min(float(delay), MAX_POLICY_WAIT)


async def attempts(
    runner: ItemRunner,
    index: int | None,
    item: Any,
    hold: Hold,
    record: Callable[[Any, Any], None],
) -> None:
    """Run ``item``'s attempts under ``runner``'s node policy until it succeeds or fails for good.

    Each attempt passes admission (``runner.admission``), runs ``exec`` (inline
    or on the executor), under the node's ``timeout``.  On success ``record(value)``
    is called at once, before any checkpoint, so a result that exists is never
    lost to a cancel.  A throttled attempt (the Throttle says so) starts the
    Throttle's shared cool-down and is tried again without counting; any other
    ``Exception`` is retried per the policy (``max_retries``, ``retry_on``,
    :meth:`Node.retry_delay`), holding no admission while it waits, then handed
    to ``exec_fallback``, whose value is recorded (or whose exception is raised).
    ``trio.Cancelled`` and other ``BaseException`` s pass straight through.
    ``record`` is called as ``record(index, value)``.
    """
    node = runner.node
    admission = runner.admission
    run = runner.run_exec
    throttle = admission.throttle if admission is not None else None
    timeout = node.timeout
    attempt = 0
    throttled_for = 0.0  # the cool-downs this item waited out (bounded by ``max_throttle_wait``)
    while True:
        # Set the attempt only when it differs from what this task already sees.
        token = attempt_var.set(attempt) if attempt_var.get() != attempt else None
        ticket_token = None
        cool_down: float | None = None
        try:
            plain = False
            try:
                if admission is not None:
                    await admission.enter(hold, node.cost(item) if throttle is not None else 1)
                    if throttle is not None:  # for ``Node.report_usage`` inside exec
                        ticket_token = current_ticket.set(hold.ticket)
                if runner.attached is not None:
                    runner.attached.emit("attempt_started", runner.event_node, index, attempt)
                if timeout is None:
                    result = run(item)
                    if is_awaitable(result):
                        result = await result
                    else:
                        plain = True
                else:
                    with trio.fail_after(timeout):
                        result = run(item)
                        if is_awaitable(result):
                            result = await result
                        else:
                            plain = True
            except Exception as exc:
                error: Exception = exc
                if throttle is not None and throttle.is_throttle(exc):
                    pause = admission.exit(hold, "throttled", exc)  # type: ignore[union-attr]
                    if throttled_for + pause <= node.max_throttle_wait:
                        if runner.attached is not None:
                            runner.attached.emit("throttled", runner.event_node, index, pause, exc)
                        throttled_for += pause
                        cool_down = pause  # not an attempt of the policy: try again after the cool-down
                    else:
                        limit = node.max_throttle_wait
                        note = (
                            f"{type(node).__name__}: item {index} was throttled for {throttled_for:g} s in all; "
                            f"another cool-down ({pause:g} s) would pass max_throttle_wait={limit:g} s, "
                            f"so this throttle counts as a failure (retried per max_retries, then exec_fallback)"
                        )
                        if note not in getattr(exc, "__notes__", ()):  # the same exception object raised again
                            exc.add_note(note)
                elif admission is not None:
                    admission.exit(hold, "failed", exc)
            except BaseException:
                if admission is not None:
                    admission.exit(hold, "cancelled")
                raise
            else:
                if admission is not None:
                    admission.exit(hold, "ok")
                runner.record_result(index, item, result, record)
                if plain:  # a plain ``def exec``: yield, as an async one would (after recording)
                    await trio.lowlevel.checkpoint()
                return
        finally:
            if token is not None:
                attempt_var.reset(token)
            if ticket_token is not None:
                current_ticket.reset(ticket_token)
        if cool_down is not None:
            # Wait out the shared cool-down holding nothing (no slot, no limiter token), so a
            # node that shares the limiter but not the Throttle goes on meanwhile.
            await trio.sleep(cool_down)
            continue
        # ``error`` failed this attempt: retry, or fall back.
        if attempt + 1 >= node.max_retries or not isinstance(error, node.retry_on):
            value = node.exec_fallback(item, error)
            if is_awaitable(value):
                value = await value
                record(index, value)
            else:
                record(index, value)
                await trio.lowlevel.checkpoint()
            return
        delay = node.retry_delay(error, attempt)
        delay = policy_delay(node, attempt) if delay is None else _check_delay(node, delay)
        if runner.attached is not None:
            runner.attached.emit("retry_scheduled", runner.event_node, index, attempt, delay, error)
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        attempt += 1


# -- the item runner --------------------------------------------------------------


class ItemRunner:
    """What every item of one batch goes through after it is pulled; decided once per batch.

    Args:
        node: the node whose policy (retries, timeout, fallback, throttle
            handling) the items follow, and that instruments are told about.
        call: the work of one item: ``exec``, a ``parallel_map`` function, or a
            batch flow's sub-flow run; plain ``def`` or ``async def``.
        admission: the admit stage (None: nothing to take per attempt).
        recorder: the store's side of the batch (None: not durable).
        event_node: the node named in instrument events (default ``node``).
        with_index: call ``call(index, item)`` instead of ``call(item)``.

    ``fast`` is true when an item needs nothing but ``call`` itself (no policy,
    no admission, no executor, no store, no instrument): the pool then awaits
    ``call(item)`` (``call(index, item)`` with ``with_index``) inline in its
    hottest loop (``fast_async``: and ``call`` is ``async def``, so its result
    needs no check).
    """

    __slots__ = (
        "admission",
        "attached",
        "call",
        "durable",
        "event_node",
        "fast",
        "fast_async",
        "node",
        "noun",
        "recorder",
        "run_exec",
        "with_index",
    )

    def __init__(
        self,
        node: Node,
        call: Callable[..., Any],
        *,
        admission: Admission | None = None,
        recorder: Recorder | None = None,
        event_node: Node | None = None,
        with_index: bool = False,
    ) -> None:
        self.node = node
        self.call = call
        self.admission = admission if admission else None
        self.recorder = recorder
        #: the batch's recorder, whichever way its stages are run (told when the batch finishes)
        self.durable = recorder
        self.event_node = node if event_node is None else event_node
        self.with_index = with_index
        #: what an item is called in notes: a batch flow's items are its param sets
        self.noun = "param set" if with_index else "item"
        self.attached = _instrument.current() if node is not None else None
        executor = getattr(node, "executor", None)
        bound = executor.bind(type(node).__name__, call) if executor is not None and not with_index else None
        from ._node import has_policy

        if (
            recorder is not None
            and not with_index
            and bound is None
            and self.attached is None
            and not has_policy(node)
            and attempt_var.get() == 0
        ):
            # An attempt is the call alone: the store's stages wrap it, and the pool's fast path runs it.
            self.call = call = recorder.wrap(call)
            self.recorder = None
        self.run_exec: Callable[[Any], Any] = call if bound is None else bound
        self.fast = (
            not with_index
            and bound is None
            and self.admission is None
            and self.recorder is None
            and self.attached is None
            and not has_policy(node)
            and attempt_var.get() == 0
        )
        if with_index and bound is None and self.admission is None and recorder is None and self.attached is None:
            self.fast = True  # a batch flow's sub-flow run with nothing around it: ``await call(index, item)``
        self.fast_async = self.fast and (with_index or inspect.iscoroutinefunction(call))

    def record_result(self, index: Any, item: Any, value: Any, record: Callable[[Any, Any], None]) -> None:
        """The record stage for a value ``exec`` returned: the store (which may refuse a value it
        cannot keep, failing the item), then the caller's slot.  A plain node's ``exec``
        (``index`` None) is its batch's item 0."""
        if self.recorder is not None:
            self.recorder.record(0 if index is None else index, item, value)
        record(index, value)

    async def run(self, index: int, item: Any, hold: Hold, record: Callable[[Any, Any], None]) -> None:
        """Take item ``index`` through its life; ``record(index, value)`` gets its result.

        Raises:
            Exception: the item failed for good (after its retries and fallback).
        """
        recorder = self.recorder
        attached = self.attached
        if attached is None and recorder is None:
            if self.with_index:
                await self._with_index(index, item, hold, record)
            else:
                await attempts(self, index, item, hold, record)
            return
        node = self.event_node
        place = None
        if recorder is not None:
            # -- done before? A replayed item emits item_finished only (exec is not called).
            done = recorder.lookup(index, item)
            while isinstance(done, Pending):  # a duplicate in flight: wait for it, holding no place
                if self.admission is not None:
                    self.admission.exit(hold)
                done = await done.wait()
                if done is MISSING:  # it failed: this one tries for itself
                    done = recorder.lookup(index, item)
            if done is not MISSING:
                record(index, done)
                if attached is not None:
                    attached.emit("item_finished", node, index, None, done)
                if recorder.replayed():
                    await trio.lowlevel.checkpoint()
                return
            if recorder.backlogged():
                await recorder.wait_for_room()
            if self.with_index:
                place = recorder.enter(index)  # the sub-run's steps are placed under the param set's key
        value: Any = None

        def keep(index: Any, result: Any) -> None:
            nonlocal value
            value = result
            record(index, result)

        if attached is not None:
            attached.emit("item_started", node, index)
        try:
            if self.with_index:
                await self._with_index(index, item, hold, keep)
            else:
                await attempts(self, index, item, hold, keep)
        except BaseException as exc:
            if recorder is not None:
                recorder.settle(index, exc, place)
            if attached is not None:
                attached.emit("item_finished", node, index, exc, None)
            raise
        if recorder is not None:
            recorder.settle(index, None, place)
        if attached is not None:
            attached.emit("item_finished", node, index, None, value)

    async def _with_index(self, index: int, item: Any, hold: Hold, keep: Callable[[Any, Any], None]) -> None:
        """One run of a batch flow's sub-flow: admitted once, not retried (a flow has no policy)."""
        admission = self.admission
        if admission is None:
            value = await self.call(index, item)
            self.record_result(index, item, value, keep)
            return
        try:
            if admission is not None:
                await admission.enter(hold, 1)
            value = await self.call(index, item)
        except Exception as exc:
            if admission is not None:
                admission.exit(hold, "failed", exc)
            raise
        except BaseException:
            if admission is not None:
                admission.exit(hold, "cancelled")
            raise
        if admission is not None:
            admission.exit(hold, "ok")
        self.record_result(index, item, value, keep)
