"""Node: one step of a flow, its wiring, and its retry/timeout policy."""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Awaitable, Callable, Mapping
from types import CoroutineType
from typing import Any, ClassVar, TypeVar

import attrs
import trio

from . import _durable, _instrument
from ._item import MISSING, Admission, Hold, ItemRunner, Pending, attempt_var, attempts

__all__ = ["Node"]

N = TypeVar("N", bound="Node")

# The attempt number lives in ``_item`` with the retry core; the adapters read it here.
_attempt = attempt_var


# What plain ``prep``/``post`` methods mostly return; never awaitable, so
# ``call`` skips ``inspect.isawaitable`` (an ABC check) for them.
_PLAIN_TYPES = frozenset({type(None), str, int, float, bool, list, dict, tuple})


def _is_awaitable(value: Any) -> bool:
    kind = type(value)
    return kind is CoroutineType or (kind not in _PLAIN_TYPES and inspect.isawaitable(value))


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


def _to_exception_types(value: Any) -> Any:
    if isinstance(value, type):
        return (value,)
    if isinstance(value, (tuple, list, set, frozenset)):
        return tuple(value)
    return value  # left for the validator to name


def _check_retry_on(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    expected = (
        "an Exception subclass or a tuple of them, e.g. retry_on=(TimeoutError, ConnectionError)"
    )
    if not isinstance(value, tuple):
        raise TypeError(f"{type(instance).__name__}.retry_on must be {expected}, not {value!r}")
    for exc_type in value:
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            raise TypeError(
                f"{type(instance).__name__}.retry_on must be {expected}; {exc_type!r} is not: "
                "trio.Cancelled and other BaseExceptions are never retried"
            )


def check_params(owner: object, params: Any) -> None:
    """Raise a clear error, naming the node, for ``params`` that are not a dict."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{node_name(owner)}.params must be a dict of param names to values, not "
            f"{type(params).__name__} {params!r:.60}"
        )


def _check_params(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_params(instance, value)


def _check_throttle(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (callable(getattr(value, "acquire", None)) and hasattr(value, "release")):
        raise TypeError(f"{type(instance).__name__}.throttle must be a trioflow.Throttle or None, not {value!r}")


def check_executor(owner: str, executor: Any, fn: Callable[..., Any]) -> None:
    """Raise a clear error, naming ``owner``, for an executor that cannot run ``fn``."""
    if executor is None:
        return
    if not callable(getattr(executor, "bind", None)):
        raise TypeError(
            f"{owner}.executor must be a trioflow.executors executor (Inline, Threads, Processes, Dask) "
            f"or None, not {executor!r}"
        )
    if not getattr(executor, "inline", False) and inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{owner}: exec is async def, so it runs in the Trio task; executor={type(executor).__name__}(...) "
            "runs only a plain def exec (for blocking or CPU-bound work): make exec a plain def, "
            "or drop the executor"
        )


def _check_executor(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_executor(type(instance).__name__, value, type(instance).exec)


def _check_max_throttle_wait(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"{type(instance).__name__}.max_throttle_wait must be a number of seconds >= 0, not {value!r}"
        )


def node_name(node: object) -> str:
    return type(node).__name__


def check_action(node: object, action: object) -> str | None:
    if action is None or isinstance(action, str):
        return action
    raise TypeError(f"{node_name(node)}.post returned {action!r}; an action must be a str or None")


def _is_option_value(value: Any) -> bool:
    """Whether a class attribute is a value for an option: not a method, property or other
    descriptor, nor an attrs field definition (``attrs.field(...)``, which attrs itself takes);
    a class is a value (``retry_on = ValueError``)."""
    if isinstance(value, type):
        return True
    return not callable(value) and not hasattr(value, "__get__") and not type(value).__module__.startswith("attr")


def _class_defaults_of(cls: type) -> dict[str, Any]:
    """The constructor arguments that ``cls`` and its bases set as plain class attributes, by alias.

    ``class Embed(ParallelBatchNode): max_concurrency = 16`` reads as a default, as it
    would in most Python classes; attrs alone would let the constructor's own default
    shadow it.  The value is the one Python's attribute lookup gives (the classes of
    the MRO, mixins included, from the last to the first), except that an attrs class
    declaring a field starts it afresh with the field's own default.  An option may be
    set by its name or by its constructor alias (``start_node`` or ``start``).
    """
    carried = cls.__dict__.get("_class_defaults")
    if carried is not None:
        # attrs rebuilt a slotted class, leaving the fields' names out of its dict: what the
        # class as written set was worked out before (and copied here).
        return dict(carried)
    options: dict[str, str] = {}
    for field in getattr(cls, "__attrs_attrs__", ()):
        if field.init:
            alias = field.alias or field.name
            options[field.name] = options[alias] = alias
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        own = klass.__dict__
        for field in own.get("__attrs_attrs__", ()):
            if not field.inherited:  # declared here: its own default from now on
                defaults.pop(field.alias or field.name, None)
        for name, value in own.items():
            alias = options.get(name)
            if alias is not None and _is_option_value(value):
                defaults[alias] = value
    return defaults


def _taking_class_defaults(cls: type, init: Callable[..., None]) -> Callable[..., None]:
    """``init`` (an attrs constructor of ``cls``) taking the class attributes of ``type(self)`` as defaults.

    An argument given, by keyword or by position, wins; a dict or list default is
    copied per node, as a default factory would.
    """
    positional = [field.alias or field.name for field in attrs.fields(cls) if field.init and not field.kw_only]

    @functools.wraps(init)
    def __init__(self: Node, *args: Any, **kwargs: Any) -> None:
        defaults = type(self)._class_defaults
        if defaults:
            given = positional[: len(args)]
            for name, value in defaults.items():
                if name not in kwargs and name not in given:
                    kwargs[name] = value.copy() if type(value) in (dict, list) else value
        init(self, *args, **kwargs)

    return __init__


@attrs.define(slots=False, eq=False, kw_only=True)
class Node:
    """One step: ``prep(shared) -> exec(prep_res) -> post(shared, prep_res, exec_res)``.

    Override any of the three (``async def`` or plain ``def``; a plain one runs
    inline, so it must not block: the engine yields to Trio at every flow step
    and after each plain ``exec`` of a batch item, once its result is recorded,
    so a batch of plain items shares the run and stops between items when
    cancelled; for blocking or CPU-bound work give the node an ``executor``).
    ``post`` returns the action that picks the next node in a :class:`Flow`
    (None means ``"default"``).

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
    params: dict[str, Any] = attrs.field(factory=dict, validator=_check_params)
    #: Seconds an item may spend in a Throttle's cool-downs in all, before its
    #: throttled attempt counts as a failure like any other.
    max_throttle_wait: float = attrs.field(default=600.0, validator=_check_max_throttle_wait)
    #: A :class:`trioflow.Throttle` shared with other nodes (one per API provider):
    #: every attempt of ``exec`` passes through it.
    throttle: Any = attrs.field(default=None, validator=_check_throttle)
    #: Where a plain ``def exec`` runs (:mod:`trioflow.executors`); None: inline in the Trio task.
    executor: Any = attrs.field(default=None, validator=_check_executor)
    #: Part of the key of every result a durable run records: bump it when ``exec`` changes.
    version: str = ""
    #: Whether a durable run records this node's results (False: cheap steps, unpicklable results).
    durable: bool = True
    successors: dict[str, Node] = attrs.field(factory=dict, init=False, repr=False)

    #: Whether this class's ``prep``, ``exec`` or ``post`` is ``async def`` (set per
    #: class).  Such a method is trusted to yield, as Trio asks of every async
    #: function, so a flow yields itself only at the steps of nodes that have none.
    _has_async_method: ClassVar[bool] = False

    #: Constructor arguments given as class attributes (``class Embed(ParallelBatchNode):
    #: max_concurrency = 16``), by name: the defaults of this class's constructor.
    _class_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._has_async_method = any(inspect.iscoroutinefunction(getattr(cls, m)) for m in ("prep", "exec", "post"))
        cls._class_defaults = _class_defaults_of(cls)

    @classmethod
    def __attrs_init_subclass__(cls) -> None:
        # attrs made this subclass a constructor of its own (attrs >= 24.1 calls this hook):
        # it takes the class attributes too, except for the fields this class declares.
        own = {field.alias or field.name for field in attrs.fields(cls) if not field.inherited}
        cls._class_defaults = {name: value for name, value in cls._class_defaults.items() if name not in own}
        if "__attrs_init__" in cls.__dict__:  # the class wrote its own __init__, which calls this one
            cls.__attrs_init__ = _taking_class_defaults(cls, cls.__attrs_init__)  # type: ignore[attr-defined]
        else:
            cls.__init__ = _taking_class_defaults(cls, cls.__init__)  # type: ignore[method-assign]

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

    def retry_delay(self, exc: Exception, attempt: int) -> float | None:
        """The wait in seconds before the attempt after ``attempt`` (0-based), which failed with ``exc``.

        None means the policy: ``wait * backoff**attempt`` plus a uniform
        random ``[0, jitter)``, capped at one day (so a large ``backoff`` never
        overflows).  By default a Retry-After carried by the exception (an HTTP
        429/503 response's ``retry-after-ms`` or ``retry-after`` header, or an
        ``exc.retry_after`` attribute) is honoured, for this item alone; with a
        :class:`Throttle`, a throttled attempt pauses every user of the Throttle
        instead and is not a retry.  Override to decide per exception.
        """
        from ._throttle import retry_after_of

        return retry_after_of(exc)

    def cost(self, item: Any) -> float:
        """The weight of one attempt of ``item`` in a Throttle's ``tokens_per_minute`` budget (default 1).

        For an LLM call, an estimate of its tokens, e.g. ``len(prompt) / 4 + max_tokens``.
        """
        return 1

    def report_usage(self, tokens: float) -> None:
        """Inside ``exec``: tell the node's Throttle what this attempt really weighed.

        ``cost(item)`` is an estimate made before the call; the API's answer
        usually says what it billed (``reply.usage.total_tokens``).  Reported
        here, it replaces the estimate in the Throttle's ``tokens_per_minute``
        budget when the attempt ends.  Without a Throttle it does nothing.
        Not seen from a ``Processes`` or ``Dask`` executor (another process).

        Raises:
            TypeError: ``tokens`` is not a number >= 0.
        """
        from ._throttle import report_usage

        report_usage(tokens)

    # -- wiring ----------------------------------------------------------------

    def set_params(self, params: dict[str, Any]) -> None:
        """Set the params this node runs with (a flow sets them on each step)."""
        # Checked here, then attrs' on-setattr hooks skipped (a flow sets
        # params on every step; the type check is what the validator does).
        if type(params) is not dict:
            check_params(self, params)
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
        return attempt_var.get()

    # -- running -----------------------------------------------------------------

    async def run(self, shared: Any, *, store: Any = None, run_id: str | None = None) -> str | None:
        """Run this node (a flow: its graph) and return its action; a plain node's successors are not run.

        Args:
            shared: the state the nodes read and write (a dict, for a durable flow).
            store: makes the run durable: a path (a SQLite file,
                :class:`trioflow.store.SQLiteStore`) or a store object.  Each finished
                batch item's result and each finished flow step is recorded under
                ``run_id``; run it again after a crash, a Ctrl-C or a failure and it
                restores ``shared`` to the last finished step and runs only what is
                left.  Nested flows and nodes use the run's store (a run that a node
                starts itself, ``await other.run(shared)``, is not part of it).
            run_id: the name of the run in the store (default: this node's class name).
                One process at a time may run it (:class:`trioflow.store.LeaseError`).

        Example::

            await flow.run(shared, store="runs.db", run_id="nightly")  # killed halfway? run it again
        """
        if self.successors:
            warnings.warn(f"{node_name(self)} won't run successors. Use Flow.", UserWarning, stacklevel=2)
        # A public async API, so a full checkpoint whatever the node's methods do.
        await trio.lowlevel.checkpoint()
        if store is not None or run_id is not None:
            return await _durable.run_durable(self, shared, store, run_id)
        if _durable.current() is not None:
            return await _durable.run_apart(self, shared)
        return await self._step(shared)

    def item_key(self, item: Any) -> str:
        """The identity of ``item`` across runs, for a durable run's store (a batch item, a batch
        flow's param set, a plain node's ``prep`` result).

        The default is the item's canonical JSON (keys sorted), or a hash of it when
        long; an item that is not JSON is an error that points here.  Override it to
        key items by what identifies them (never by their position alone: an
        insertion would shift every key)::

            def item_key(self, doc):
                return doc.id

        The node's place in the graph and its ``version`` are added to the key by the store.
        """
        return _durable.canonical_key(item)

    item_key._trioflow_default = True  # type: ignore[attr-defined]  # tells the default apart, cheaply

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
        exec_res = self._exec(prep_res)
        if _is_awaitable(exec_res):
            exec_res = await exec_res
        action = self.post(shared, prep_res, exec_res)
        if _is_awaitable(action):
            action = await action
        return check_action(self, action)

    def _exec(self, prep_res: Any) -> Any:
        """``exec`` under the node's policy: its result, or an awaitable of it (or of its fallback's).

        With no policy to apply (one attempt, no timeout, no fallback, no
        throttle, an inline executor, attempt 0 current), ``exec`` is called as it
        is: the coroutine of an ``async def exec`` is handed back for the caller
        to await, and a plain ``def exec``'s result is handed back at once, so
        ``post`` runs right after it (the step yields at the flow's checkpoint
        before each step, never between a result and its ``post``).
        Everything else goes through the one retry core, :func:`._item.attempts`.
        """
        executor = self.executor
        if (
            (executor is None or getattr(executor, "inline", False))
            and attempt_var.get() == 0
            and not has_policy(self)
            and _durable.current() is None
        ):
            return self.exec(prep_res)
        return self._exec_attempts(prep_res)

    async def _exec_attempts(self, prep_res: Any) -> Any:
        throttle = self.throttle
        # In a durable run, exec's result is recorded as the one item of a batch, keyed by prep_res.
        recorder = None
        if _durable.current() is not None and type(self).exec is not Node.exec:
            recorder = await _durable.recorder_for(self, "prep result")
        runner = ItemRunner(
            self, self.exec, admission=Admission(throttle=throttle) if throttle else None, recorder=recorder
        )
        hooks = runner.recorder  # None when the recorder wrapped exec (no policy: nothing else to do)
        if hooks is not None:
            done = hooks.lookup(0, prep_res)
            while isinstance(done, Pending):
                done = await done.wait()
                if done is MISSING:
                    done = hooks.lookup(0, prep_res)
            if done is not MISSING:
                hooks.finished()
                await trio.lowlevel.checkpoint()
                return done
        hold = Hold()
        box: list[Any] = []
        try:
            await attempts(runner, None, prep_res, hold, lambda index, value: box.append(value))
        except BaseException as exc:
            if hooks is not None:
                hooks.settle(0, exc)
            raise
        finally:
            if runner.admission is not None:
                runner.admission.exit(hold)
        if hooks is not None:
            hooks.settle(0, None)
        if recorder is not None:
            recorder.finished()
        return box[0]


Node.__init__ = _taking_class_defaults(Node, Node.__init__)  # type: ignore[method-assign]


@functools.lru_cache(maxsize=256)
def _mapped_class(name: str) -> type[Node]:
    """A Node class named ``name``, so instruments and errors name a ``parallel_map`` run as the user did."""
    return type(name, (Node,), {"__doc__": f"The function {name!r} of a parallel_map or as_completed run."})


def mapped_node(fn: Callable[..., Any], name: str, *, throttle: Any, executor: Any) -> Node:
    """The node that stands for ``fn`` in a ``parallel_map``/``as_completed`` run."""
    check_executor(name, executor, fn)
    node = _mapped_class(name)(throttle=throttle)
    node.exec = fn  # type: ignore[method-assign]
    if executor is not None:
        object.__setattr__(node, "executor", executor)
    return node


def has_policy(node: Node) -> bool:
    """Whether an attempt of ``node`` needs the retry core: retries, a timeout, a throttle, a fallback
    (Node's own re-raises, so it counts only when overridden, on the class or on the instance)."""
    return (
        node.max_retries != 1
        or node.timeout is not None
        or node.throttle is not None
        or type(node).exec_fallback is not _DEFAULT_FALLBACK
        or "exec_fallback" in node.__dict__
    )


_DEFAULT_FALLBACK = Node.exec_fallback


class _Transition:
    """``node - "action"``: waits for ``>> successor``."""

    __slots__ = ("action", "source")

    def __init__(self, source: Node, action: str) -> None:
        self.source = source
        self.action = action

    def __rshift__(self, target: N) -> N:
        return self.source.next(target, self.action)
