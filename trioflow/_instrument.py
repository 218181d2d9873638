"""Run-time events: watch one run without touching the node classes.

An *instrument* is any object with some of the hook methods of
:class:`Instrument`.  ``with trioflow.instrumented(bar, tracer):`` attaches
instruments to everything that runs inside the block, including every worker
task a parallel batch starts (they inherit the context variable that holds them).

A hook that raises is reported with a :class:`InstrumentWarning` and detached
for the rest of the block; the run itself goes on untouched.  Instruments are
for watching, so a bug in one must not fail a batch of a thousand API calls.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Iterator
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
    event happens, so they must be quick and must not block.
    """

    def node_started(self, node: Node) -> None:
        """A node (or a flow, which is a node) starts its ``prep``."""

    def node_finished(self, node: Node, action: str | None, error: BaseException | None) -> None:
        """A node finished: with the action its ``post`` returned, or with ``error``."""

    def item_started(self, node: Node, index: int) -> None:
        """Item ``index`` of a batch node starts its first attempt."""

    def item_finished(self, node: Node, index: int, error: BaseException | None) -> None:
        """Item ``index`` of a batch node finished (``error`` is None on success)."""

    def retry_scheduled(
        self, node: Node, index: int | None, attempt: int, delay: float, error: Exception
    ) -> None:
        """Attempt ``attempt`` (0-based) failed with ``error``; the next starts after ``delay`` s."""

    def flow_step(self, flow: Node, node: Node, action: str | None, successor: Node | None) -> None:
        """``node`` in ``flow`` returned ``action``, which leads to ``successor`` (None: the end)."""


class _Attached:
    """The instruments of one ``instrumented`` block; shared by all its tasks."""

    __slots__ = ("instruments",)

    def __init__(self, instruments: list[Any]) -> None:
        self.instruments = instruments

    def emit(self, hook: str, *args: Any) -> None:
        for instrument in tuple(self.instruments):
            method = getattr(instrument, hook, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception as exc:
                if instrument in self.instruments:
                    self.instruments.remove(instrument)
                warnings.warn(
                    f"instrument {instrument!r} raised {exc!r} in {hook}; it is detached",
                    InstrumentWarning,
                    stacklevel=2,
                )


_current: contextvars.ContextVar[_Attached | None] = contextvars.ContextVar(
    "trioflow_instruments", default=None
)


def current() -> _Attached | None:
    """The instruments attached to the running code, or None (the fast path)."""
    return _current.get()


@contextmanager
def instrumented(*instruments: Any) -> Iterator[None]:
    """Attach ``instruments`` to every node and batch run inside the block.

    Blocks nest: an inner block adds its instruments to the outer ones.

    Example::

        with trioflow.instrumented(tracer):
            await flow.run(shared)
    """
    outer = _current.get()
    attached = _Attached([*(outer.instruments if outer else ()), *instruments])
    token = _current.set(attached)
    try:
        yield
    finally:
        _current.reset(token)
