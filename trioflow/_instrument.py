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
import functools
import inspect
import re
import warnings
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio

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
    ``item_started``, then per attempt ``attempt_started`` and, for a failed
    attempt that will be retried, ``retry_scheduled`` (or ``throttled`` for an
    attempt the provider throttled), then ``item_finished``; last
    ``node_finished``.  A plain node's ``exec`` attempts have ``index`` None.
    Items of a parallel batch interleave, but each item's own events keep that
    order.  An item a durable run had recorded already (replayed from the
    store, ``exec`` not called) gets ``item_finished`` alone, with its value.
    A flow emits ``flow_step`` after each of its steps' ``node_finished``.

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

    def attempt_started(self, node: Node, index: int | None, attempt: int) -> None:
        """Attempt ``attempt`` (0-based) of item ``index`` (None: a plain node's ``exec``) was
        admitted (its cap, limiter, rate and Throttle let it start) and starts now."""

    def item_finished(self, node: Node, index: int, error: BaseException | None, value: Any = None) -> None:
        """Item ``index`` finished: ``error`` is None on success (a fallback's value counts as
        success) and ``value`` is its result; otherwise ``error`` is the exception
        (``trio.Cancelled`` when it was cancelled) and ``value`` is None.

        An instrument written for the three-argument form ``item_finished(node, index,
        error)`` still works: it is called without ``value``."""

    def retry_scheduled(
        self, node: Node, index: int | None, attempt: int, delay: float, error: Exception
    ) -> None:
        """Attempt ``attempt`` (0-based) of item ``index`` (None: a plain node's ``exec``)
        failed with ``error``; the next attempt starts after ``delay`` seconds."""

    def throttled(self, node: Node, index: int | None, delay: float, error: Exception) -> None:
        """An attempt of item ``index`` was throttled by the provider (``error``, a 429 say):
        it does not count as a retry; every user of the :class:`Throttle` pauses for
        ``delay`` seconds, then the attempt is made again."""

    def rate_changed(self, throttle: Any, rate: float) -> None:
        """An adaptive :class:`Throttle` moved its rate to ``rate`` attempts per second."""

    def flow_step(self, flow: Node, node: Node, action: str | None, successor: Node | None) -> None:
        """``node`` in ``flow`` returned ``action``, which leads to ``successor`` (None: the end)."""


#: The hooks an instrument may have, in the order of :class:`Instrument`.
HOOKS = (
    "node_started",
    "node_finished",
    "batch_started",
    "item_started",
    "attempt_started",
    "item_finished",
    "retry_scheduled",
    "throttled",
    "rate_changed",
    "flow_step",
)


def _takes_value(method: Any) -> bool:
    """Whether an ``item_finished`` hook accepts the fourth argument, ``value``."""
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # a builtin or an odd callable: assume the current form
        return True
    positional = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 4


def _hooks_of(instrument: Any) -> dict[str, Any]:
    """The hook methods of ``instrument``, checked once when it is attached.

    Raises:
        TypeError: a hook is ``async def`` (hooks are called inline and never awaited).
    """
    found: dict[str, Any] = {}
    for hook in HOOKS:
        method = getattr(instrument, hook, None)
        if method is None:
            continue
        if inspect.iscoroutinefunction(method):
            raise TypeError(
                f"instrument {type(instrument).__name__}.{hook} is async def: instrument hooks are "
                "plain methods called inline where the event happens (they are never awaited); "
                "make it a plain def, and hand slow work to a task or a memory channel"
            )
        if hook == "item_finished" and not _takes_value(method):
            three = method
            method = lambda node, index, error, value, _three=three: _three(node, index, error)  # noqa: E731
        found[hook] = method
    return found


class _Attached:
    """The instruments of one ``instrumented`` block and their hooks; shared by all its tasks.

    The hook methods are looked up once, when the block is entered, so an event
    costs one dict lookup and the calls themselves.
    """

    __slots__ = ("hooks", "instruments", "outer")

    def __init__(self, instruments: list[Any], outer: _Attached | None) -> None:
        self.instruments = instruments
        self.outer = outer
        self.hooks: dict[str, list[tuple[Any, Any]]] = {}
        for instrument in instruments:
            for hook, method in _hooks_of(instrument).items():
                self.hooks.setdefault(hook, []).append((instrument, method))

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook(*args)`` on every instrument that has it; detach one that raises."""
        for instrument, method in self.hooks.get(hook, ()):
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
            for hook, methods in attached.hooks.items():
                attached.hooks[hook] = [(i, m) for i, m in methods if i is not instrument]
            attached = attached.outer


_current: contextvars.ContextVar[_Attached | None] = contextvars.ContextVar(
    "trioflow_instruments", default=None
)

#: The instruments attached to the running code, or None (the fast path).
current = _current.get

_place: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("trioflow_place", default=())


def current_place() -> tuple[str, ...]:
    """Where in the graph the running code is, for an instrument's hook to name what it sees.

    A tuple of segments from the outermost flow inwards: the flow's class name,
    then per flow level the node's id in that flow's graph (``"Load_1"``: class
    name and a number, counted breadth-first from the start in wiring order, as
    :meth:`Flow.to_mermaid` numbers its boxes), and ``"[i]"`` for run ``i`` of a
    batch flow's sub-flow.  For example ``("Pipeline", "Grid_1", "[3]", "Blur_1")``.
    Empty outside a flow.  Flows keep it only while an instrument is attached
    (it costs a context variable per step), so read it from a hook.
    """
    return _place.get()


def place_of(node: Node) -> tuple[str, ...]:
    """The place of ``node``'s run, for an instrument to name it: :func:`current_place`,
    ending with the node's own segment.

    A step of a flow is already named by its graph id (``("Pipeline", "Load_1")``);
    anything else gets its class name added: a flow or node run alone
    (``("Pipeline",)``), a ``parallel_map`` run inside a node's ``exec``
    (``("Pipeline", "Load_1", "fetch")``).
    """
    place = _place.get()
    name = type(node).__name__
    if place:
        last = place[-1]
        stem = _graph_stem(name)
        if last == name or (last.startswith(stem) and last[len(stem) :].isdigit()):
            return place
    return (*place, name)


@functools.lru_cache(maxsize=256)
def _graph_stem(name: str) -> str:
    """``"Load_"`` for class ``Load``: a graph id is this and a number (see ``_mermaid.graph_ids``)."""
    return re.sub(r"\W", "_", name) + "_"


def task_lineage() -> Iterator[trio.lowlevel.Task]:
    """The running Trio task, then the task that started it, and so on up to the run's root.

    An instrument keys a node's run by the task that runs it (one node object
    may run several times at once, in several tasks), and finds the run that an
    item event belongs to by walking up from the worker task that emitted it.
    """
    task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
    while task is not None:
        yield task
        nursery = task.parent_nursery
        task = nursery.parent_task if nursery is not None else None


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
    :class:`InstrumentWarning`; the run goes on.  An instrument given twice (here
    or by an outer block) is attached once.

    Raises:
        TypeError: a hook of an instrument is ``async def``.

    Example::

        tracer = trioflow.Tracer()
        with trioflow.instrumented(tracer):
            await flow.run(shared)
        tracer.write_chrome_trace("run.json")
    """
    outer = _current.get()
    already = outer.instruments if outer is not None else []
    # An instrument already attached by an outer block is attached once, not twice
    # (its hooks would fire twice: a progress bar would count each item two times).
    new: list[Any] = []
    for instrument in instruments:
        if not any(instrument is i for i in (*already, *new)):
            new.append(instrument)
    if not new:
        yield
        return
    attached = _Attached([*already, *new], outer)
    token = _current.set(attached)
    try:
        yield
    finally:
        _current.reset(token)
