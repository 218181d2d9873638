"""Flow: routing, loops, nesting, params, copies, cancellation and the errors for bad graphs."""

from __future__ import annotations

import copy
from typing import Any

import attrs
import pocketflow
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioflow
from tests.strategies import params_dicts


class Record(trioflow.Node):
    """Appends (its name, its params) to ``shared["log"]``; returns ``shared["route"][name]`` if set."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name

    def prep(self, shared: dict[str, Any]) -> None:
        shared.setdefault("log", []).append((self.name, dict(self.params)))

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        return shared.get("route", {}).get(self.name)


def names(shared: dict[str, Any]) -> list[str]:
    return [name for name, _ in shared.get("log", [])]


class TestRouting:
    @pytest.mark.parametrize("route", ["left", "right"])
    async def test_Flow_routes_on_the_action_post_returns(self, route: str) -> None:
        """The action returned by post picks the successor wired for it."""
        decide, left, right = Record("decide"), Record("left"), Record("right")
        decide - "left" >> left
        decide - "right" >> right
        shared: dict[str, Any] = {"route": {"decide": route}}
        assert await trioflow.Flow(start=decide).run(shared) is None
        assert names(shared) == ["decide", route]

    async def test_Flow_None_action_means_default(self) -> None:
        """post returning None follows the "default" edge."""
        a, b = Record("a"), Record("b")
        a >> b
        a - "other" >> Record("other")
        shared: dict[str, Any] = {}
        await trioflow.Flow(start=a).run(shared)
        assert names(shared) == ["a", "b"]

    async def test_Flow_returns_the_last_action(self) -> None:
        """Flow.run returns the action of the last node it ran."""
        a, b = Record("a"), Record("b")
        a >> b
        shared: dict[str, Any] = {"route": {"b": "finished"}}
        assert await trioflow.Flow(start=a).run(shared) == "finished"

    async def test_Flow_unmatched_action_warns_and_ends(self) -> None:
        """An action that matches no edge of a node with successors warns "Flow ends" and stops there."""
        a, b = Record("a"), Record("b")
        a - "yes" >> b
        shared: dict[str, Any] = {"route": {"a": "no"}}
        with pytest.warns(UserWarning, match=r"Flow ends: 'no' not found in \['yes'\]"):
            assert await trioflow.Flow(start=a).run(shared) == "no"
        assert names(shared) == ["a"]

    async def test_Flow_action_on_a_node_without_successors_ends_silently(self) -> None:
        """A last node (no successors) may return any action; no warning (filterwarnings=error)."""
        shared: dict[str, Any] = {"route": {"a": "anything"}}
        assert await trioflow.Flow(start=Record("a")).run(shared) == "anything"

    @given(laps=st.integers(1, 60))
    def test_Flow_loops_until_a_node_routes_out(self, laps: int) -> None:
        """A node that routes back to itself runs until its counter says stop."""

        class Count(trioflow.Node):
            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
                shared["n"] = shared.get("n", 0) + 1
                return "again" if shared["n"] < laps else "done"

        count, done = Count(), Record("done")
        count - "again" >> count
        count - "done" >> done
        shared: dict[str, Any] = {}
        trioflow.run(trioflow.Flow(start=count), shared)
        assert shared["n"] == laps
        assert names(shared) == ["done"]


class TestNesting:
    async def test_Flow_as_a_step_runs_its_graph(self) -> None:
        """A Flow wired as a step of another runs its own graph, then the outer flow goes on."""
        a, b = Record("inner_a"), Record("inner_b")
        a >> b
        inner = trioflow.Flow(start=a)
        before, after = Record("before"), Record("after")
        before >> inner >> after
        shared: dict[str, Any] = {}
        await trioflow.Flow(start=before).run(shared)
        assert names(shared) == ["before", "inner_a", "inner_b", "after"]

    async def test_Flow_inner_last_action_routes_the_outer_flow(self) -> None:
        """The inner flow's action (its last node's, through Flow.post) picks the outer successor."""
        inner = trioflow.Flow(start=Record("inner"))
        inner - "left" >> Record("left")
        inner - "right" >> Record("right")
        shared: dict[str, Any] = {"route": {"inner": "right"}}
        assert await trioflow.Flow(start=inner).run(shared) is None
        assert names(shared) == ["inner", "right"]

    async def test_Flow_inner_post_return_routes_the_outer_flow(self) -> None:
        """An inner flow subclass whose post returns its own action routes the outer flow with it."""

        class Inner(trioflow.Flow):
            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
                shared["inner_exec_res"] = exec_res
                return "from_post"

        inner = Inner(start=Record("x"))
        inner - "from_post" >> Record("routed")
        shared: dict[str, Any] = {"route": {"x": "ignored"}}
        await trioflow.Flow(start=inner).run(shared)
        assert names(shared) == ["x", "routed"]
        assert shared["inner_exec_res"] == "ignored"

    async def test_Flow_post_returning_a_non_string_is_a_TypeError(self) -> None:
        """A flow whose post returns a non-str action raises a TypeError naming the flow."""

        class BadFlow(trioflow.Flow):
            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
                return 7

        with pytest.raises(TypeError, match=r"BadFlow\.post returned 7"):
            await BadFlow(start=Record("a")).run({})


class TestParams:
    @given(flow_params=params_dicts, own=params_dicts)
    def test_Flow_params_reach_every_step_like_pocketflow(
        self, flow_params: dict[str, Any], own: dict[str, Any]
    ) -> None:
        """Every step runs with the flow's params (replacing its own), as in PocketFlow."""
        a, b = Record("a", params=dict(own)), Record("b")
        a >> b
        shared: dict[str, Any] = {}
        trioflow.run(trioflow.Flow(start=a, params=dict(flow_params)), shared)

        class PFRecord(pocketflow.Node):  # type: ignore[misc]
            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name

            def prep(self, shared: dict[str, Any]) -> None:
                shared.setdefault("log", []).append((self.name, dict(self.params)))

        pa, pb = PFRecord("a"), PFRecord("b")
        pa.set_params(dict(own))
        pa >> pb
        oracle: dict[str, Any] = {}
        pf_flow = pocketflow.Flow(start=pa)
        pf_flow.set_params(dict(flow_params))
        pf_flow.run(oracle)

        assert shared["log"] == oracle["log"] == [("a", flow_params), ("b", flow_params)]

    @given(flow_params=params_dicts, param_sets=st.lists(params_dicts, max_size=6))
    def test_BatchFlow_runs_each_param_set_merged_over_its_params(
        self, flow_params: dict[str, Any], param_sets: list[dict[str, Any]]
    ) -> None:
        """Each run of a BatchFlow's sub-flow gets {**self.params, **d}, in order, at every step."""

        class Batch(trioflow.BatchFlow):
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return param_sets

        a, b = Record("a"), Record("b")
        a >> b
        shared: dict[str, Any] = {}
        trioflow.run(Batch(start=a, params=dict(flow_params)), shared)
        expected = [{**flow_params, **d} for d in param_sets]
        assert shared.get("log", []) == [(n, p) for p in expected for n in ("a", "b")]

    @given(
        outer_params=params_dicts,
        outer_sets=st.lists(params_dicts, max_size=3),
        inner_sets=st.lists(params_dicts, max_size=3),
    )
    def test_BatchFlow_nested_in_BatchFlow_merges_both_levels_like_pocketflow(
        self,
        outer_params: dict[str, Any],
        outer_sets: list[dict[str, Any]],
        inner_sets: list[dict[str, Any]],
    ) -> None:
        """A BatchFlow inside a BatchFlow runs its leaf with {**outer.params, **d_outer, **d_inner}."""

        class Outer(trioflow.BatchFlow):
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return outer_sets

        class Inner(trioflow.BatchFlow):
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return inner_sets

        shared: dict[str, Any] = {}
        trioflow.run(Outer(start=Inner(start=Record("leaf")), params=dict(outer_params)), shared)

        class PFOuter(pocketflow.BatchFlow):  # type: ignore[misc]
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return outer_sets

        class PFInner(pocketflow.BatchFlow):  # type: ignore[misc]
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return inner_sets

        class PFLeaf(pocketflow.Node):  # type: ignore[misc]
            def prep(self, shared: dict[str, Any]) -> None:
                shared.setdefault("log", []).append(("leaf", dict(self.params)))

        oracle: dict[str, Any] = {}
        pf_outer = PFOuter(start=PFInner(start=PFLeaf()))
        pf_outer.set_params(dict(outer_params))
        pf_outer.run(oracle)

        expected = [("leaf", {**outer_params, **d1, **d2}) for d1 in outer_sets for d2 in inner_sets]
        assert shared.get("log", []) == oracle.get("log", []) == expected

    async def test_ParallelBatchFlow_gives_each_run_its_own_params(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Concurrent runs of a ParallelBatchFlow each see their own merged params at every step."""

        class Slow(Record):
            async def exec(self, prep_res: Any) -> None:
                await trio.sleep(10 - self.params["i"])  # later runs finish first

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared.setdefault("post", []).append((self.name, dict(self.params)))

        class Fan(trioflow.ParallelBatchFlow):
            def prep(self, shared: Any) -> list[dict[str, Any]]:
                return [{"i": i} for i in range(5)]

        a, b = Slow("a"), Slow("b")
        a >> b
        shared: dict[str, Any] = {}
        await Fan(start=a, params={"run": "r"}).run(shared)
        expected = {(n, i) for n in "ab" for i in range(5)}
        assert {(n, p["i"]) for n, p in shared["post"]} == expected
        assert all(p == {"run": "r", "i": p["i"]} for _, p in shared["post"])


class Remember(trioflow.Node):
    """Keeps what it read in ``self`` between prep, exec and post (legal: each step is a copy)."""

    def prep(self, shared: dict[str, Any]) -> None:
        self.who = shared["who"]
        self.copies = shared.setdefault("copies", [])
        self.copies.append(id(self))

    async def exec(self, prep_res: Any) -> None:
        await trio.sleep(self.params.get("delay", 1))

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared.setdefault("seen", []).append(self.who)


class TestCopies:
    async def test_Flow_never_mutates_the_wired_nodes(self, autojump_clock: trio.testing.MockClock) -> None:
        """After a run, the wired nodes have their own params and no attribute a step set."""
        a, b = Remember(params={"mine": 1}), Remember(params={"mine": 2})
        a >> b
        before = [copy.copy(vars(a)), copy.copy(vars(b))]
        shared: dict[str, Any] = {"who": "x"}
        await trioflow.Flow(start=a, params={"delay": 3}).run(shared)
        assert [vars(a), vars(b)] == before
        assert not hasattr(a, "who")
        assert shared["seen"] == ["x", "x"]
        assert id(a) not in shared["copies"]
        assert id(b) not in shared["copies"]

    async def test_Flow_same_graph_runs_twice_concurrently(self, autojump_clock: trio.testing.MockClock) -> None:
        """One wired graph run twice at once in a nursery gives each run its own results."""
        a = Remember()
        a >> Remember()
        flow = trioflow.Flow(start=a)
        first: dict[str, Any] = {"who": "first"}
        second: dict[str, Any] = {"who": "second"}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flow.run, first)
            nursery.start_soon(flow.run, second)
        assert first["seen"] == ["first", "first"]
        assert second["seen"] == ["second", "second"]

    async def test_Flow_copy_keeps_attributes_set_in_a_plain_subclass_init(self) -> None:
        """A PocketFlow-style subclass that sets attributes in its own __init__ keeps them in each step's copy."""

        class Greet(trioflow.Node):
            def __init__(self, greeting: str) -> None:
                super().__init__(max_retries=2)
                self.greeting = greeting

            def prep(self, shared: dict[str, Any]) -> None:
                shared["out"] = (self.greeting, self.max_retries, id(self))

        node = Greet("hello")
        shared: dict[str, Any] = {}
        await trioflow.Flow(start=node).run(shared)
        greeting, retries, step_id = shared["out"]
        assert (greeting, retries) == ("hello", 2)
        assert step_id != id(node)

    async def test_Flow_copy_keeps_fields_of_a_slotted_attrs_subclass(self) -> None:
        """An @attrs.define (slotted) user subclass keeps its fields and Node's in each step's copy."""

        @attrs.define
        class Suffix(trioflow.Node):
            suffix: str = "?"

            def prep(self, shared: dict[str, Any]) -> None:
                shared["out"] = (self.suffix, self.wait, dict(self.params), id(self))

        node = Suffix(suffix="!", wait=2.0)
        assert "suffix" in vars(type(node))["__slots__"]
        shared: dict[str, Any] = {}
        await trioflow.Flow(start=node, params={"p": 1}).run(shared)
        suffix, wait, params, step_id = shared["out"]
        assert (suffix, wait, params) == ("!", 2.0, {"p": 1})
        assert step_id != id(node)
        assert node.params == {}


class TestBadGraphs:
    async def test_Flow_without_start_is_a_ValueError_naming_the_flow(self) -> None:
        """Running a flow with no start node says which flow."""

        class Empty(trioflow.Flow):
            pass

        with pytest.raises(ValueError, match="Empty has no start node"):
            await Empty().run({})

    def test_Flow_start_must_be_a_node(self) -> None:
        """Flow.start() refuses a non-node, naming the flow."""

        class MyFlow(trioflow.Flow):
            pass

        with pytest.raises(TypeError, match=r"MyFlow\.start"):
            MyFlow().start("a")  # type: ignore[arg-type]

    async def test_Flow_start_given_a_non_node_fails_at_run_naming_the_flow(self) -> None:
        """Flow(start=...) with a non-node is refused, naming the flow."""

        class MyFlow(trioflow.Flow):
            pass

        with pytest.raises(TypeError, match="MyFlow"):
            await MyFlow(start="a").run({})  # type: ignore[arg-type]

    @pytest.mark.parametrize("action", [42, ["go"], b"go"])
    async def test_Node_post_returning_a_non_string_is_a_TypeError_naming_the_node(self, action: Any) -> None:
        """A step whose post returns a non-str action stops the flow with a TypeError naming it."""

        class Bad(trioflow.Node):
            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> Any:
                return action

        with pytest.raises(TypeError, match=r"Bad\.post returned"):
            await trioflow.Flow(start=Bad()).run({})
        with pytest.raises(TypeError, match=r"Bad\.post returned"):
            await Bad().run({})


class TestCancellation:
    async def test_Flow_cancelled_from_outside_stops_at_the_next_checkpoint(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """move_on_after stops a sequential flow inside the running step: its post and later steps never run."""

        class Step(trioflow.Node):
            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name

            def prep(self, shared: dict[str, Any]) -> None:
                shared["log"].append(f"{self.name}.prep")

            async def exec(self, prep_res: Any) -> None:
                await trio.sleep(1)

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["log"].append(f"{self.name}.post")

        a, b, c = Step("a"), Step("b"), Step("c")
        a >> b >> c
        shared: dict[str, Any] = {"log": []}
        with trio.move_on_after(1.5) as scope:
            await trioflow.Flow(start=a).run(shared)
        assert scope.cancelled_caught
        assert shared["log"] == ["a.prep", "a.post", "b.prep"]

    async def test_Flow_of_plain_def_nodes_yields_at_each_step(self) -> None:
        """A looping flow whose nodes are all plain def still lets another task run and cancel it."""
        limit = 1000

        class Spin(trioflow.Node):
            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
                shared["n"] = shared.get("n", 0) + 1
                return "again" if shared["n"] < limit else "stop"

        spin = Spin()
        spin - "again" >> spin
        shared: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def cancel_soon() -> None:
                await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()

            nursery.start_soon(trioflow.Flow(start=spin).run, shared)
            nursery.start_soon(cancel_soon)
        assert shared.get("n", 0) < limit


    async def test_Flow_notices_a_cancel_at_each_step_of_async_nodes_that_never_yield(self) -> None:
        """A cancel from inside a step stops the flow before the next step even if no async method awaited."""
        scope = trio.CancelScope()

        class Step(trioflow.Node):
            async def exec(self, prep_res: Any) -> None:
                return None

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["log"].append(self.params["name"])
                scope.cancel()

        a = Step()
        a >> Step()
        shared: dict[str, Any] = {"log": []}
        with scope:
            await trioflow.Flow(start=a, params={"name": "a"}).run(shared)
        assert scope.cancelled_caught
        assert shared["log"] == ["a"]

    async def test_BatchFlow_of_plain_def_nodes_yields_at_each_step(self) -> None:
        """A BatchFlow of plain-def nodes lets another task run and cancel it before its param sets run out."""
        limit = 1000

        class Count(trioflow.Node):
            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["n"] = shared.get("n", 0) + 1

        class Many(trioflow.BatchFlow):
            def prep(self, shared: dict[str, Any]) -> list[dict[str, int]]:
                return [{"i": i} for i in range(limit)]

        shared: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def cancel_soon() -> None:
                await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()

            nursery.start_soon(Many(start=Count()).run, shared)
            nursery.start_soon(cancel_soon)
        assert shared.get("n", 0) < limit


class TestStart:
    async def test_Flow_start_sets_the_start_and_returns_it_for_wiring(self) -> None:
        """flow.start(a) >> b reads like PocketFlow's and runs a then b."""
        flow = trioflow.Flow()
        a = Record("a")
        assert flow.start(a) is a
        flow.start(a) >> Record("b")
        shared: dict[str, Any] = {}
        await flow.run(shared)
        assert names(shared) == ["a", "b"]

    async def test_BatchFlow_post_action_routes_the_outer_flow(self) -> None:
        """A BatchFlow wired as a step routes the outer flow on what its post returns."""

        class Grid(trioflow.BatchFlow):
            def prep(self, shared: Any) -> list[dict[str, int]]:
                return [{"i": 0}, {"i": 1}]

            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> str:
                return "report"

        grid = Grid(start=Record("cell"))
        grid - "report" >> Record("report")
        shared: dict[str, Any] = {}
        await trioflow.Flow(start=grid).run(shared)
        assert shared["log"] == [("cell", {"i": 0}), ("cell", {"i": 1}), ("report", {})]
