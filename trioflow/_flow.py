"""Flow, BatchFlow, ParallelBatchFlow: walk a graph of nodes, routing on actions."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import AsyncIterable, Awaitable, Mapping
from typing import Any

import attrs
import trio

from . import _instrument
from ._batch import check_items, check_parallel_options, closing_async_gen, pool_for
from ._errors import add_note
from ._node import Node, call, check_action, node_name
from ._parallel import OnError

__all__ = ["BatchFlow", "Flow", "ParallelBatchFlow"]


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
        current: Node | None = copy.copy(self.start_node)
        action: str | None = None
        while current is not None:
            current.set_params(step_params)
            # A checkpoint at every step: a full one for a node whose methods are
            # all plain def (nothing else in the step yields, and a loop of them
            # must not starve other tasks), else a cancel check (its async methods yield).
            if current._has_async_method:
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await trio.lowlevel.checkpoint()
            action = await current._step(shared)
            successor = self.get_next_node(current, action)
            attached = _instrument.current()
            if attached is not None:
                attached.emit("flow_step", self, current, action, successor)
            current = copy.copy(successor)
        return action

    async def _run(self, shared: Any) -> str | None:
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
    ``(shared, prep_res, None)``.

    Example (PocketFlow's image x filter grid)::

        class ImageGrid(trioflow.BatchFlow):
            def prep(self, shared):
                return [{"image": i, "filter": f} for i in shared["images"] for f in FILTERS]

        await ImageGrid(start=load >> apply_filter >> save).run(shared)
    """

    async def _run(self, shared: Any) -> str | None:
        prep_res = await call(self.prep, shared)
        param_sets = check_items(self, prep_res)
        _instrument.batch_started(self, param_sets)
        index = 0
        try:
            if isinstance(param_sets, AsyncIterable):
                async with closing_async_gen(param_sets) as async_param_sets:
                    async for param_set in async_param_sets:
                        await self._orch_item(shared, index, param_set)
                        index += 1
            else:
                for param_set in param_sets:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    await self._orch_item(shared, index, param_set)
                    index += 1
        except Exception as exc:
            add_note(exc, f"raised by param set {index} of {node_name(self)}")
            raise
        return check_action(self, await call(self.post, shared, prep_res, None))

    def _orch_item(self, shared: Any, index: int, param_set: Any) -> Awaitable[str | None]:
        """One run of the sub-flow, with the item events an instrument sees for a batch node's item.

        A plain function that returns the awaitable, as ``BatchNode._exec_item``:
        with no instrument attached a run costs no coroutine beyond ``_orch``.
        """
        attached = _instrument.current()
        if attached is None:
            return self._orch(shared, _params(self, param_set))
        return self._orch_item_watched(attached, shared, index, param_set)

    async def _orch_item_watched(
        self, attached: _instrument._Attached, shared: Any, index: int, param_set: Any
    ) -> str | None:
        attached.emit("item_started", self, index)
        try:
            action = await self._orch(shared, _params(self, param_set))
        except BaseException as exc:
            attached.emit("item_finished", self, index, exc)
            raise
        attached.emit("item_finished", self, index, None)
        return action


@attrs.define(slots=False, eq=False, kw_only=True)
class ParallelBatchFlow(BatchFlow):
    """As :class:`BatchFlow`, but the sub-flow runs concurrently, once per param dict.

    Each run has its own node copies and params.  The options are those of
    :class:`ParallelBatchNode`: ``max_concurrency``, ``limiter``,
    ``max_per_second`` and ``on_error`` (a failed run raises
    :class:`BatchError` and cancels the others; ``post`` is not called).
    """

    max_concurrency: int | None = None
    limiter: trio.CapacityLimiter | None = None
    max_per_second: float | None = None
    on_error: OnError = "raise"

    def __attrs_post_init__(self) -> None:
        check_parallel_options(self)

    async def _run(self, shared: Any) -> str | None:
        prep_res = await call(self.prep, shared)
        param_sets = check_items(self, prep_res)
        _instrument.batch_started(self, param_sets)
        await pool_for(self, functools.partial(self._orch_item, shared), param_sets).run_to_list()
        return check_action(self, await call(self.post, shared, prep_res, None))
