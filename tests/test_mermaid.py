"""Flow.to_mermaid(): the graph as a Mermaid flowchart."""

from __future__ import annotations

import attrs

import trioflow


class Load(trioflow.Node):
    pass


class Draft(trioflow.ParallelBatchNode):
    pass


class Review(trioflow.Node):
    pass


class Fix(trioflow.Node):
    pass


class Publish(trioflow.BatchNode):
    pass


class Polish(trioflow.Flow):
    pass


class PerChapter(trioflow.ParallelBatchFlow):
    pass


@attrs.define(slots=False, eq=True, kw_only=True)
class Tagged(trioflow.Node):
    """An attrs subclass with eq=True: unhashable, and equal to every other Tagged."""

    tag: str = ""


def editorial_flow() -> trioflow.Flow:
    """Branches (approve / revise / empty), a loop back from the nested flow, two Reviews, batch kinds."""
    load, draft, review = Load(), Draft(), Review()
    fix = Fix()
    fix >> Review()
    polish = Polish(start=fix)
    load >> draft >> review
    review - "revise" >> polish
    polish >> review
    review - "approve" >> Publish()
    load - "empty" >> Review()
    return trioflow.Flow(start=load)


class TestToMermaid:
    def test_Flow_to_mermaid_branching_looping_nested_graph(self) -> None:
        """Nodes by class name with per-class ids, action labels, a subgraph for the nested flow, batch kinds."""
        assert editorial_flow().to_mermaid() == (
            "flowchart TD\n"
            '    Load_1["Load"]\n'
            '    Draft_1[["Draft (parallel batch)"]]\n'
            '    Review_1["Review"]\n'
            '    Review_2["Review"]\n'
            '    subgraph Polish_1 ["Polish"]\n'
            '        Fix_1["Fix"]\n'
            '        Review_3["Review"]\n'
            "    end\n"
            '    Publish_1[["Publish (batch)"]]\n'
            "    Load_1 --> Draft_1\n"
            '    Load_1 -->|"empty"| Review_1\n'
            "    Draft_1 --> Review_2\n"
            '    Review_2 -->|"revise"| Polish_1\n'
            '    Review_2 -->|"approve"| Publish_1\n'
            "    Fix_1 --> Review_3\n"
            "    Polish_1 --> Review_2\n"
        )

    def test_Flow_to_mermaid_is_stable_and_does_not_depend_on_the_run(self) -> None:
        """Two calls, and two graphs built the same way, give the same text."""
        flow = editorial_flow()
        assert flow.to_mermaid() == flow.to_mermaid() == editorial_flow().to_mermaid()

    def test_Flow_to_mermaid_batch_flows_and_direction(self) -> None:
        """Batch flows are marked on their subgraph; the direction is passed through."""
        write = Review()
        write >> Fix()
        chapters = PerChapter(start=write, max_concurrency=4)
        chapters - "failed" >> Load()
        assert trioflow.Flow(start=chapters).to_mermaid("LR") == (
            "flowchart LR\n"
            '    subgraph PerChapter_1 ["PerChapter (parallel batch flow)"]\n'
            '        Review_1["Review"]\n'
            '        Fix_1["Fix"]\n'
            "    end\n"
            '    Load_1["Load"]\n'
            "    Review_1 --> Fix_1\n"
            '    PerChapter_1 -->|"failed"| Load_1\n'
        )

    def test_Flow_to_mermaid_tells_apart_equal_unhashable_nodes(self) -> None:
        """Nodes are told apart by identity: equal, unhashable attrs nodes are still two boxes; a self-loop is one."""
        a, b = Tagged(), Tagged()
        assert a == b
        a - "again" >> a
        a >> b
        assert trioflow.Flow(start=a).to_mermaid() == (
            "flowchart TD\n"
            '    Tagged_1["Tagged"]\n'
            '    Tagged_2["Tagged"]\n'
            '    Tagged_1 -->|"again"| Tagged_1\n'
            "    Tagged_1 --> Tagged_2\n"
        )

    def test_Flow_to_mermaid_quotes_actions(self) -> None:
        """A double quote in an action becomes Mermaid's #quot; entity, so the label cannot break out."""
        a = Load()
        a - 'say "hi"' >> Fix()
        assert '-->|"say #quot;hi#quot;"|' in trioflow.Flow(start=a).to_mermaid()
