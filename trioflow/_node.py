"""Node: one step of a flow, its wiring, and its retry/timeout policy."""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import random
import warnings
from collections.abc import Awaitable
from types import CoroutineType
from typing import Any, ClassVar, TypeVar

import attrs
import trio

from . import _instrument

__all__ = ["Node"]

N = TypeVar("N", bound="Node")

# The 0-based attempt of the exec call running in this task.  A context
# variable, so every item of a parallel batch sees its own attempt.
_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("trioflow_attempt", default=0)


# What plain ``prep``/``post`` methods mostly return; never awaitable, so
# ``call`` skips ``inspect.isawaitable`` (an ABC check) for them.
_PLAIN_TYPES = frozenset({type(None), str, int, float, bool, list, dict, tuple})


def _is_awaitable(value: Any) -> bool:
    return type(value) not in _PLAIN_TYPES and inspect.isawaitable(value)


async def call(fn: Any, *args: Any) -> Any:
    """Call a user method that may be ``async def`` or plain ``def``."""
    result = fn(*args)
    if _is_awaitable(result):
        return await result
    return result


@functools.lru_cache(maxsize=512)
def _slot_names(cls: type) -> tuple[str, ...]:
    """The instance slots of ``cls`` and its bases (computed once per class)."""
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                names.append(name)
    return tuple(names)


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a number > 0 or None, not {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise ValueError(f"{type(instance).__name__}.{attribute.name} must be a finite number >= 0, not {value!r}")


def _check_max_retries(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{type(instance).__name__}.max_retries counts attempts and must be an int >= 1, not {value!r}"
        )


def _check_backoff(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{type(instance).__name__}.backoff must be a finite number > 0, not {value!r}")


def _to_exception_types(value: Any) -> tuple[type[Exception], ...]:
    if isinstance(value, type):
        value = (value,)
    return tuple(value)


def _check_retry_on(instance: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for exc_type in value:
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            raise TypeError(
                f"{type(instance).__name__}.retry_on takes Exception subclasses only, not {exc_type!r}: "
                "trio.Cancelled and other BaseExceptions are never retried"
            )


def node_name(node: object) -> str:
    return type(node).__name__


def check_action(node: object, action: object) -> str | None:
    if action is None or isinstance(action, str):
        return action
    raise TypeError(f"{node_name(node)}.post returned {action!r}; an action must be a str or None")


@attrs.define(slots=False, eq=False, kw_only=True)
class Node:
    """One step: ``prep(shared) -> exec(prep_res) -> post(shared, prep_res, exec_res)``.

    Override any of the three (``async def`` or plain ``def``; a plain one runs
    inline, so it must not block, and the engine yields to Trio after each
    plain ``exec`` call, so a batch of plain items shares the run and stops
    between items when cancelled).  ``post`` returns the action that picks the
    next node in a :class:`Flow` (None means ``"default"``).

    ``exec`` is retried on failure: ``max_retries`` counts attempts (1: no
    retry), the wait before retry *k* (0-based) is ``wait * backoff**k`` plus a
    uniform random ``[0, jitter)``, and ``timeout`` bounds each attempt (a
    timed-out attempt raises ``trio.TooSlowError``, a failure like any other).
    Only exceptions matching ``retry_on`` are retried.  When the attempts are
    used up, ``exec_fallback(prep_res, exc)`` decides (by default it re-raises).
    ``trio.Cancelled`` and other ``BaseException`` s are never retried nor
    passed to ``exec_fallback``.  Inside ``exec``, ``self.cur_retry`` is the
    0-based attempt of *this* call, even when a batch runs items concurrently.

    Example::

        class Summarize(trioflow.Node):
            def prep(self, shared):
                return shared["text"]

            async def exec(self, text):
                return await call_llm(f"Summarize: {text}")

            def post(self, shared, prep_res, exec_res):
                shared["summary"] = exec_res

        await Summarize(max_retries=3, wait=1.0, backoff=2.0, timeout=30).run(shared)
    """

    max_retries: int = attrs.field(default=1, validator=_check_max_retries)
    wait: float = attrs.field(default=0.0, validator=_non_negative)
    backoff: float = attrs.field(default=1.0, validator=_check_backoff)
    jitter: float = attrs.field(default=0.0, validator=_non_negative)
    timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    retry_on: tuple[type[Exception], ...] = attrs.field(
        default=(Exception,), converter=_to_exception_types, validator=_check_retry_on
    )
    params: dict[str, Any] = attrs.field(factory=dict)
    successors: dict[str, Node] = attrs.field(factory=dict, init=False, repr=False)

    #: Whether this class's ``prep``, ``exec`` or ``post`` is ``async def`` (set per
    #: class).  Such a method is trusted to yield, as Trio asks of every async
    #: function, so a flow yields itself only at the steps of nodes that have none.
    _has_async_method: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._has_async_method = any(inspect.iscoroutinefunction(getattr(cls, m)) for m in ("prep", "exec", "post"))

    # -- the user's methods ----------------------------------------------------

    def prep(self, shared: Any) -> Any:
        """Read what ``exec`` needs from ``shared``.  May be ``async def``."""
        return None

    def exec(self, prep_res: Any) -> Any:
        """Do the work (an API call, a computation); do not touch ``shared``.  May be ``async def``."""
        return None

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
        """Called when every attempt failed; its return stands in for ``exec``'s.  Re-raises by default."""
        raise exc

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        """Write results to ``shared`` and return the next action (None: ``"default"``)."""
        return None

    # -- wiring ----------------------------------------------------------------

    def set_params(self, params: dict[str, Any]) -> None:
        """Set the params this node runs with (a flow sets them on each step)."""
        # ``params`` has no converter or validator: skip attrs' on-setattr hooks,
        # which a flow would otherwise pay on every step.
        object.__setattr__(self, "params", params)

    def next(self, node: N, action: str = "default") -> N:
        """Make ``node`` the successor for ``action``; return ``node`` so chains read left to right."""
        if not isinstance(action, str):
            raise TypeError(f"{node_name(self)}: an action must be a str, not {action!r}")
        if not isinstance(node, Node):
            raise TypeError(
                f"{node_name(self)} - {action!r} >> {node!r}: the successor must be a trioflow Node"
            )
        if action in self.successors:
            warnings.warn(
                f"{node_name(self)}: overwriting successor for action '{action}'",
                UserWarning,
                stacklevel=3,
            )
        self.successors[action] = node
        return node

    def __rshift__(self, other: N) -> N:
        return self.next(other)

    def __sub__(self, action: str) -> _Transition:
        if isinstance(action, str):
            return _Transition(self, action)
        raise TypeError(f"{node_name(self)} - {action!r}: an action must be a str")

    def __copy__(self: N) -> N:
        # Copy the instance dict and every slot, whatever mix of plain classes,
        # slotted and dict attrs classes the user built on top of Node.
        cls = type(self)
        new = cls.__new__(cls)
        new.__dict__.update(self.__dict__)
        for name in _slot_names(cls):  # type: ignore[arg-type]  # mypy: a TypeVar-bound type is not "Hashable"
            try:
                value = object.__getattribute__(self, name)
            except AttributeError:
                continue
            object.__setattr__(new, name, value)
        return new

    @property
    def cur_retry(self) -> int:
        """The 0-based attempt of the ``exec`` call running in this task (PocketFlow's name)."""
        return _attempt.get()

    # -- running -----------------------------------------------------------------

    async def run(self, shared: Any) -> str | None:
        """Run this node alone (its successors are not run) and return its action."""
        if self.successors:
            warnings.warn(f"{node_name(self)} won't run successors. Use Flow.", UserWarning, stacklevel=2)
        # A public async API, so a full checkpoint whatever the node's methods do.
        await trio.lowlevel.checkpoint()
        return await self._step(shared)

    def _step(self, shared: Any) -> Awaitable[str | None]:
        """``_run`` with the node events, as a flow runs each step (the caller checkpoints).

        A plain function that returns the awaitable: with no instrument attached
        (the fast path) a step costs no coroutine beyond ``_run``.
        """
        attached = _instrument.current()
        if attached is None:
            return self._run(shared)
        return self._step_watched(attached, shared)

    async def _step_watched(self, attached: _instrument._Attached, shared: Any) -> str | None:
        attached.emit("node_started", self)
        try:
            action = await self._run(shared)
        except BaseException as exc:
            attached.emit("node_finished", self, None, exc)
            raise
        attached.emit("node_finished", self, action, None)
        return action

    async def _run(self, shared: Any) -> str | None:
        # ``call`` inlined: a plain-def prep or post then costs no coroutine.
        prep_res = self.prep(shared)
        if _is_awaitable(prep_res):
            prep_res = await prep_res
        exec_res = await self._exec(prep_res)
        action = self.post(shared, prep_res, exec_res)
        if _is_awaitable(action):
            action = await action
        return check_action(self, action)

    def _exec(self, prep_res: Any) -> Awaitable[Any]:
        return self._exec_with_policy(prep_res, None)

    def _exec_with_policy(self, prep_res: Any, index: int | None) -> Awaitable[Any]:
        """``exec`` under the retry/timeout policy, then ``exec_fallback``: an awaitable.

        When there is no policy to apply (one attempt, no timeout, the default
        ``exec_fallback`` that re-raises, and attempt 0 already current), the
        coroutine of an ``async def exec`` is handed back as it is: awaiting it
        is all the policy would do, and a batch item then costs no coroutine of
        the engine's own.  Everything else goes through :meth:`_exec_retrying`.
        """
        if (
            self.max_retries == 1
            and self.timeout is None
            and type(self).exec_fallback is Node.exec_fallback
            and _attempt.get() == 0
        ):
            result = self.exec(prep_res)
            if type(result) is CoroutineType or inspect.isawaitable(result):
                return result
            return _ready(result)
        return self._exec_retrying(prep_res, index)

    async def _exec_retrying(self, prep_res: Any, index: int | None) -> Any:
        """``exec`` under the retry/timeout policy, then ``exec_fallback``.  The one retry core."""
        attempt = 0
        while True:
            # Set the attempt only when it differs from what this task already
            # sees (0 on the first attempt of a fresh item): the common case then
            # allocates no context or token per item.
            token = _attempt.set(attempt) if _attempt.get() != attempt else None
            try:
                if self.timeout is None:
                    result = self.exec(prep_res)
                    if type(result) is CoroutineType or inspect.isawaitable(result):
                        result = await result
                    else:  # a plain ``def exec``: yield, as an async one would
                        await trio.lowlevel.checkpoint()
                    return result
                with trio.fail_after(self.timeout):
                    return await call(self.exec, prep_res)
            except Exception as exc:
                if attempt + 1 >= self.max_retries or not isinstance(exc, self.retry_on):
                    return await call(self.exec_fallback, prep_res, exc)
                delay = self.wait * self.backoff**attempt
                if self.jitter:
                    delay += random.uniform(0, self.jitter)
                attached = _instrument.current()
                if attached is not None:
                    attached.emit("retry_scheduled", self, index, attempt, delay, exc)
            finally:
                if token is not None:
                    _attempt.reset(token)
            if delay > 0:
                await trio.sleep(delay)
            else:
                await trio.lowlevel.checkpoint()
            attempt += 1


async def _ready(value: Any) -> Any:
    """An awaitable of a plain ``def exec``'s result, for the no-policy path.

    A full checkpoint first, as after every plain ``exec`` (see
    :meth:`Node._exec_retrying`): a batch of plain-def items then yields once
    per item, so it shares the run and a cancel stops it between items.
    """
    await trio.lowlevel.checkpoint()
    return value


class _Transition:
    """``node - "action"``: waits for ``>> successor``."""

    __slots__ = ("action", "source")

    def __init__(self, source: Node, action: str) -> None:
        self.source = source
        self.action = action

    def __rshift__(self, target: N) -> N:
        return self.source.next(target, self.action)
