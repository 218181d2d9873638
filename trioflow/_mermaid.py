"""``Flow.to_mermaid()``: a flow's graph as a Mermaid flowchart."""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["to_mermaid"]


def _kind(node: Node) -> str | None:
    """The batch kind shown after the class name, or None for a plain node or flow."""
    from ._batch import BatchNode, ParallelBatchNode
    from ._flow import BatchFlow, ParallelBatchFlow

    if isinstance(node, ParallelBatchNode):
        return "parallel batch"
    if isinstance(node, BatchNode):
        return "batch"
    if isinstance(node, ParallelBatchFlow):
        return "parallel batch flow"
    if isinstance(node, BatchFlow):
        return "batch flow"
    return None


def _quote(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


class _Writer:
    def __init__(self) -> None:
        # id() of each node object, not hash(): a user's attrs subclass may be unhashable,
        # and two equal nodes wired twice are still two nodes of the graph.
        self.ids: dict[int, str] = {}
        self.per_class: dict[str, int] = {}
        self.lines: list[str] = []
        self.edges: list[str] = []

    def ident(self, node: Node) -> str:
        key = id(node)
        ident = self.ids.get(key)
        if ident is None:
            name = re.sub(r"\W", "_", type(node).__name__)
            self.per_class[name] = count = self.per_class.get(name, 0) + 1
            ident = self.ids[key] = f"{name}_{count}"
        return ident

    def label(self, node: Node) -> str:
        kind = _kind(node)
        name = type(node).__name__
        return _quote(name if kind is None else f"{name} ({kind})")

    def graph(self, start: Node | None, indent: str, seen: set[int]) -> None:
        """Declare every node reachable from ``start`` (breadth first, successors in wiring
        order) and collect the edges; a nested flow becomes a subgraph."""
        from ._flow import Flow

        queue: deque[Node] = deque([start] if start is not None else [])
        while queue:
            node = queue.popleft()
            if id(node) in seen:
                continue
            seen.add(id(node))
            ident = self.ident(node)
            if isinstance(node, Flow) and node.start_node is not None:
                self.lines.append(f"{indent}subgraph {ident} [{self.label(node)}]")
                self.graph(node.start_node, indent + "    ", seen)
                self.lines.append(f"{indent}end")
            elif _kind(node) is not None:
                self.lines.append(f"{indent}{ident}[[{self.label(node)}]]")
            else:
                self.lines.append(f"{indent}{ident}[{self.label(node)}]")
            for action, successor in node.successors.items():
                arrow = "-->" if action == "default" else f"-->|{_quote(action)}|"
                self.edges.append(f"    {ident} {arrow} {self.ident(successor)}")
                queue.append(successor)


def graph_ids(flow: Node) -> dict[int, str]:
    """``id(node) -> "Name_k"`` for the nodes of ``flow``'s own graph (not inside nested flows),
    numbered per class breadth-first from the start, successors in wiring order."""
    from ._flow import Flow

    assert isinstance(flow, Flow)
    writer = _Writer()
    queue: deque[Node] = deque([flow.start_node] if flow.start_node is not None else [])
    while queue:
        node = queue.popleft()
        if id(node) in writer.ids:
            continue
        writer.ident(node)
        queue.extend(node.successors.values())
    return writer.ids


def to_mermaid(flow: Node, direction: str = "TD") -> str:
    """The graph under ``flow`` as Mermaid flowchart source; see ``Flow.to_mermaid``."""
    from ._flow import Flow

    assert isinstance(flow, Flow)
    writer = _Writer()
    writer.graph(flow.start_node, "    ", {id(flow)})
    return "\n".join([f"flowchart {direction}", *writer.lines, *writer.edges]) + "\n"
