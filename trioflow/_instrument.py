"""Run-time events: watch one run without touching the node classes.

An *instrument* is any object with some of the hook methods of
:class:`Instrument`.  ``with trioflow.instrumented(bar, tracer):`` attaches
instruments to everything that runs inside the block, including every worker
task a parallel batch starts (they inherit the context variable that holds them).

A hook that raises an ``Exception`` is reported with an
:class:`InstrumentWarning` and detached for the rest of the block (and of the
blocks around it); the run itself goes on untouched.  Instruments are for
watching, so a bug in one must not fail a batch of a thousand API calls.
A ``BaseException`` from a hook (``KeyboardInterrupt``, ``trio.Cancelled``)
is never swallowed: it propagates like one from the node itself.  Under
``-W error`` (pytest's ``filterwarnings = error``) the warning itself is raised
where the event happened, so a faulty instrument then fails the run loudly,
which is what a test suite wants.

Cost: each place that can emit an event reads one context variable; with no
instrument attached that read is all it does.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["Instrument", "InstrumentWarning", "instrumented"]


class InstrumentWarning(RuntimeWarning):
    """An instrument's hook raised; it was detached and the run went on."""


class Instrument:
    """Base class with a no-op method for every event; override what you need.

    Subclassing is optional: any object with some of these methods works.
    Hooks are plain (synchronous) methods called inline in the task where the
    event happens, so they must be quick and must not block.  They run inside
    the Trio run, so ``trio.current_time()`` and ``trio.lowlevel.current_task()``
    work in them.

    Per node the events come in this order: ``node_started``, then for a
    batch node (or batch flow) ``batch_started``, then per item
    ``item_started``, ``retry_scheduled`` once per failed attempt that will be
    retried, ``item_finished``; last ``node_finished``.  Items of a parallel
    batch interleave, but each item's own events keep that order.  A flow
    emits ``flow_step`` after each of its steps' ``node_finished``.

    Example::

        class Failures(trioflow.Instrument):
            def __init__(self):
                self.count = 0

            def item_finished(self, node, index, error):
                if isinstance(error, Exception):
                    self.count += 1

        failures = Failures()
        with trioflow.instrumented(failures):
            await flow.run(shared)
    """

    def node_started(self, node: Node) -> None:
        """A node (or a flow, which is a node) starts its ``prep``."""

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        """A node finished: with the action its ``post`` returned, or with ``error``."""

    def batch_started(self, node: Node, total: int | None) -> None:
        """A batch node or batch flow got its items from ``prep``: ``total`` of them, or None
        when the input has no length (a generator, an async iterator)."""

    def item_started(self, node: Node, index: int) -> None:
        """Item ``index`` of a batch node (or param set of a batch flow) starts its first attempt."""

    def item_finished(self, node: Node, index: int, error: BaseException | None) -> None:
        """Item ``index`` finished: ``error`` is None on success (a fallback's value counts as
        success), the exception otherwise (``trio.Cancelled`` when it was cancelled)."""

    def retry_scheduled(
        self, node: Node, index: int | None, attempt: int, delay: float, error: Exception
    ) -> None:
        """Attempt ``attempt`` (0-based) of item ``index`` (None: a plain node's ``exec``)
        failed with ``error``; the next attempt starts after ``delay`` seconds."""

    def flow_step(self, flow: Node, node: Node, action: str | None, successor: Node | None) -> None:
        """``node`` in ``flow`` returned ``action``, which leads to ``successor`` (None: the end)."""


class _Attached:
    """The instruments of one ``instrumented`` block; shared by all its tasks."""

    __slots__ = ("instruments", "outer")

    def __init__(self, instruments: list[Any], outer: _Attached | None) -> None:
        self.instruments = instruments
        self.outer = outer

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook(*args)`` on every instrument that has it; detach one that raises."""
        for instrument in tuple(self.instruments):
            method = getattr(instrument, hook, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception as exc:
                self._detach(instrument)
                warnings.warn(
                    f"instrument {instrument!r} raised {exc!r} in {hook}; it is detached",
                    InstrumentWarning,
                    stacklevel=3,
                )

    def _detach(self, instrument: Any) -> None:
        attached: _Attached | None = self
        while attached is not None:
            # identity, not ==: an instrument may define __eq__ (or be an unhashable attrs class)
            attached.instruments[:] = [i for i in attached.instruments if i is not instrument]
            attached = attached.outer


_current: contextvars.ContextVar[_Attached | None] = contextvars.ContextVar(
    "trioflow_instruments", default=None
)

#: The instruments attached to the running code, or None (the fast path).
current = _current.get


def batch_started(node: Node, items: object) -> None:
    """Emit ``batch_started`` with ``len(items)`` when the input has a length."""
    attached = _current.get()
    if attached is not None:
        total: int | None = None
        if isinstance(items, Sized):
            try:
                total = len(items)
            except Exception:  # a watcher must not fail the run over a broken __len__
                total = None
        attached.emit("batch_started", node, total)


@contextmanager
def instrumented(*instruments: Any) -> Iterator[None]:
    """Attach ``instruments`` to every node and batch run inside the block.

    The instruments follow the run into every task it starts (parallel batch
    workers included), because they are held in a context variable.  Blocks
    nest: an inner block adds its instruments to the outer ones.  With no
    instrument at all, the block changes nothing (and costs nothing).

    A hook that raises an ``Exception`` is detached with an
    :class:`InstrumentWarning`; the run goes on.

    Example::

        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            await flow.run(shared)
        tracer.write_chrome_trace("run.json")
    """
    outer = _current.get()
    if not instruments:
        yield
        return
    attached = _Attached([*(outer.instruments if outer else ()), *instruments], outer)
    token = _current.set(attached)
    try:
        yield
    finally:
        _current.reset(token)
