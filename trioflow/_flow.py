"""Flow, BatchFlow, ParallelBatchFlow: walk a graph of nodes, routing on actions."""

from __future__ import annotations

import contextvars
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from . import _durable, _instrument
from ._batch import check_items, check_parallel_options, run_parallel, run_sequential, runner_for
from ._item import MISSING
from ._mermaid import graph_ids
from ._node import Node, call, check_action, node_name
from ._parallel import OnError

__all__ = ["BatchFlow", "Flow", "ParallelBatchFlow"]

#: The flows running on the current path (their wired identities), to catch a flow inside itself.
_running: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar("trioflow_running", default=())

#: The node policy fields a flow does not apply, with their defaults.
_NODE_ONLY = {"max_retries": 1, "wait": 0.0, "backoff": 1.0, "jitter": 0.0, "timeout": None, "executor": None}


def check_flow_options(flow: Node) -> None:
    """Refuse, naming the flow, the node policy fields that a flow would silently ignore."""
    for name, default in _NODE_ONLY.items():
        if getattr(flow, name) != default:
            raise ValueError(
                f"{node_name(flow)}.{name}={getattr(flow, name)!r}: a flow does not retry, time out or "
                "ship its run; set the policy on its nodes (or wrap the run in trio.fail_after for a "
                "deadline on the whole flow)"
            )
    if flow.retry_on != (Exception,):
        raise ValueError(f"{node_name(flow)}.retry_on: a flow does not retry its run; set retry_on on its nodes")
    if flow.throttle is not None and not isinstance(flow, BatchFlow):
        raise ValueError(
            f"{node_name(flow)}.throttle: a plain Flow has no attempts to admit; give the throttle to its "
            "nodes (a batch flow takes one: each run of its sub-flow passes through it)"
        )


@attrs.define(slots=False, eq=False, kw_only=True)
class Flow(Node):
    """Runs a graph of nodes from ``start``; each node's action picks its successor.

    A flow is a node, so flows nest.  Each step runs a fresh copy of the wired
    node (``copy.copy``) with the flow's params, so the graph the user built is
    never mutated and one graph can run many times at once.  ``run`` returns
    the last node's action (what ``post`` returns; override it to change that).

    Example::

        load = LoadDocument()
        translate = Translate(max_concurrency=8)
        load >> translate
        load - "empty" >> Report()
        await trioflow.Flow(start=load).run(shared)
    """

    start_node: Node | None = attrs.field(default=None, alias="start", kw_only=False)
    #: The wired flow's identity, shared by the copies a parent flow runs (to catch a cycle).
    _identity: object = attrs.field(factory=object, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        check_flow_options(self)

    def start(self, start: Node) -> Node:
        """Set the first node; return it so wiring can go on from it."""
        if not isinstance(start, Node):
            raise TypeError(f"{node_name(self)}.start: the start must be a trioflow Node, not {start!r}")
        self.start_node = start
        return start

    def get_next_node(self, current: Node, action: str | None) -> Node | None:
        """The successor of ``current`` for ``action``; warns when the action matches no edge."""
        successor = current.successors.get(action or "default")
        if successor is None and current.successors:
            warnings.warn(
                f"Flow ends: '{action}' not found in {list(current.successors)} "
                f"(from {node_name(current)} in {node_name(self)})",
                UserWarning,
                stacklevel=2,
            )
        return successor

    def to_mermaid(self, direction: str = "TD") -> str:
        """The graph under this flow as Mermaid flowchart source (paste it in a Markdown
        ```` ```mermaid ```` block, or https://mermaid.live).

        Each node object is one box labelled with its class name; a class wired
        twice gets two boxes with ids ``Name_1``, ``Name_2`` (numbered in
        breadth-first order from the start, so they are stable from run to run).
        Batch kinds are marked (``[[Name (parallel batch)]]``), an edge is
        labelled with its action (a ``"default"`` edge, ``a >> b``, is left
        bare), a loop is an edge back, and a nested flow is a subgraph that
        edges enter and leave as a whole.

        Args:
            direction: Mermaid's direction: ``"TD"`` (top-down) or ``"LR"`` (left to right).

        Example::

            print(trioflow.Flow(start=load).to_mermaid())
        """
        from ._mermaid import to_mermaid

        return to_mermaid(self, direction)

    async def _orch(self, shared: Any, params: dict[str, Any] | None = None) -> str | None:
        if self.start_node is None:
            raise ValueError(f"{node_name(self)} has no start node: pass Flow(start=node)")
        if not isinstance(self.start_node, Node):
            raise TypeError(f"{node_name(self)}: the start must be a trioflow Node, not {self.start_node!r}")
        step_params = params if params is not None else dict(self.params)
        # The place of each step in the graph, for instruments (see ``current_place``).
        ids = graph_ids(self) if _instrument.current() is not None else None
        base = (_instrument.current_place() or (node_name(self),)) if ids is not None else ()
        # In a durable run: the steps' places in the store, and the steps a resumed run skips.
        walk = _durable.flow_walk(self) if _durable.current() is not None else None
        wired: Node | None = self.start_node
        action: str | None = None
        while wired is not None:
            if walk is not None:
                recorded = walk.next(wired)
                if recorded is not MISSING:  # finished before the run was interrupted: skip it
                    action = recorded
                    wired = self.get_next_node(wired, action)
                    continue
            current = wired.__copy__()  # copy.copy's own lookup, skipped: every Node has __copy__
            current.set_params(step_params)
            # A checkpoint at every step: a full one for a node whose methods are
            # all plain def (nothing else in the step yields, and a loop of them
            # must not starve other tasks), else a cancel check (its async methods yield).
            if current._has_async_method:
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await trio.lowlevel.checkpoint()
            if ids is None and walk is None:
                action = await current._step(shared)
            else:
                token = None
                if ids is not None:
                    token = _instrument._place.set((*base, ids.get(id(wired), node_name(wired))))
                place = walk.enter() if walk is not None else None
                try:
                    action = await current._step(shared)
                finally:
                    if place is not None:
                        walk.leave(place)  # type: ignore[union-attr]
                    if token is not None:
                        _instrument._place.reset(token)
                if walk is not None:
                    walk.record(action, shared)
            successor = self.get_next_node(current, action)
            attached = _instrument.current()
            if attached is not None:
                attached.emit("flow_step", self, current, action, successor)
            wired = successor
        return action

    async def _run(self, shared: Any) -> str | None:
        running = _running.get()
        if self._identity in running:
            raise ValueError(
                f"{node_name(self)} contains itself (it is one of its own steps, or a step of a flow "
                "inside it): a flow cannot run inside itself; to repeat steps, wire a loop edge "
                "(node - 'again' >> earlier_node)"
            )
        token = _running.set((*running, self._identity))
        try:
            return await self._run_flow(shared)
        finally:
            _running.reset(token)

    async def _run_flow(self, shared: Any) -> str | None:
        prep_res = await call(self.prep, shared)
        result = await self._orch(shared)
        return check_action(self, await call(self.post, shared, prep_res, result))

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        """Return the last node's action (``exec_res``), as PocketFlow does."""
        return exec_res


def _params(flow: Node, param_set: Any) -> dict[str, Any]:
    if not isinstance(param_set, Mapping):
        raise TypeError(
            f"{node_name(flow)}.prep must yield param dicts, not {type(param_set).__name__} {param_set!r:.60}"
        )
    return {**flow.params, **param_set}


@attrs.define(slots=False, eq=False, kw_only=True)
class BatchFlow(Flow):
    """Runs the sub-flow once per param dict that ``prep`` returns, in order.

    Each run gets params ``{**self.params, **d}``.  ``post`` gets
    ``(shared, prep_res, exec_res)`` where ``exec_res`` is the list of each
    run's last action, in input order.  A failing run propagates as it is, with
    a note naming the run's index.

    Example (PocketFlow's image x filter grid)::

        class ImageGrid(trioflow.BatchFlow):
            def prep(self, shared):
                return [{"image": i, "filter": f} for i in shared["images"] for f in FILTERS]

        await ImageGrid(start=load >> apply_filter >> save).run(shared)
    """

    async def _run_flow(self, shared: Any) -> str | None:
        prep_res = await call(self.prep, shared)
        param_sets = check_items(self, prep_res)
        recorder = await _durable.recorder_for(self, "param set") if _durable.current() is not None else None
        runner = runner_for(self, functools.partial(self._sub_run, shared), with_index=True, recorder=recorder)
        results = await self._run_all(runner, param_sets)
        return check_action(self, await call(self.post, shared, prep_res, results))

    async def _run_all(self, runner: Any, param_sets: Any) -> list[Any]:
        return await run_sequential(self, runner, param_sets)

    def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
        """Return None (the ``"default"`` action), as PocketFlow's batch flows do."""
        return None

    async def _sub_run(self, shared: Any, index: int, param_set: Any) -> str | None:
        """One run of the sub-flow, with params ``{**self.params, **param_set}``."""
        if not isinstance(param_set, Mapping):
            raise TypeError(
                f"{node_name(self)}.prep must yield param dicts (one per run of the sub-flow), "
                f"not {type(param_set).__name__} {param_set!r:.60}"
            )
        params = {**self.params, **param_set}
        if _instrument.current() is None:
            return await self._orch(shared, params)
        place = _instrument.current_place() or (node_name(self),)
        token = _instrument._place.set((*place, f"[{index}]"))
        try:
            return await self._orch(shared, params)
        finally:
            _instrument._place.reset(token)


@attrs.define(slots=False, eq=False, kw_only=True)
class ParallelBatchFlow(BatchFlow):
    """As :class:`BatchFlow`, but the sub-flow runs concurrently, once per param dict.

    Each run has its own node copies and params.  The options are those of
    :class:`ParallelBatchNode`: ``max_concurrency``, ``limiter``,
    ``max_per_second``, ``throttle``, ``max_pending`` and ``on_error``.  With
    ``on_error="raise"`` a failed run raises :class:`BatchError` and cancels
    the others (``post`` is not called); with ``"collect"`` the other runs go
    on and ``post``'s ``exec_res`` has the failed run's exception object in its
    slot, beside the other runs' last actions, so a failure never vanishes.
    """

    max_concurrency: int | None = None
    limiter: trio.CapacityLimiter | None = None
    max_per_second: float | None = None
    on_error: OnError = "raise"
    max_pending: int | None = None

    def __attrs_post_init__(self) -> None:
        check_flow_options(self)
        check_parallel_options(self)

    async def _run_all(self, runner: Any, param_sets: Any) -> list[Any]:
        return await run_parallel(self, runner, param_sets)
