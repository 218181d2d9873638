"""Differential tests: random small PocketFlow programs, run on real pocketflow and on adapters.pocketflow.

Hypothesis draws a program as data (a graph of sync/async/batch/parallel nodes
and nested flows, retries, fallbacks, param sets, branching actions); it is
then built from either module and run.  The shared store, the returned action,
the warnings and the raised exception (type and text) must be the same.

Delays are counted in turns of the asyncio loop (``await asyncio.sleep(0)``),
so no wall-clock time is involved.  Items of one parallel node may have
different delays (they start together, as under ``asyncio.gather``); the
sub-flows of a parallel batch flow run the same graph, so they take equally
long, which is the case where PocketFlow's order (start order) is promised.

Every program also leaves a trail in a context variable (each prep, attempt
and fallback appends to it) and records the trail its exec and post see, and
the caller reads it after the run: so the contexts (one per run, shared from
prep to post, a copy per parallel item and sub-flow, changes visible to the
caller) must be PocketFlow's too.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import warnings
from dataclasses import dataclass
from typing import Any

import pocketflow as real
import pytest
from hypothesis import event, example, given, note
from hypothesis import strategies as st
from trio_asyncio._sync import SyncTrioEventLoop

import adapters.pocketflow as pf

SYNC_NODES = ["Node", "BatchNode"]
ASYNC_NODES = ["AsyncNode", "AsyncBatchNode", "AsyncParallelBatchNode"]
SYNC_FLOWS = ["Flow", "BatchFlow"]
ASYNC_FLOWS = ["AsyncFlow", "AsyncBatchFlow", "AsyncParallelBatchFlow"]
ACTIONS = [None, "a", "b"]
STEP_BUDGET = 12  # after this many posts in one (sub-)run, every node returns "stop"

TRAIL: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("trail", default=())


def mark(*entry: Any) -> tuple[Any, ...]:
    """Append ``entry`` to the trail in the current context; return the trail."""
    trail = (*TRAIL.get(), entry)
    TRAIL.set(trail)
    return trail


@dataclass(frozen=True)
class NodeSpec:
    kind: str
    max_retries: int
    fails: tuple[int, ...]  # failing attempts of item i: fails[i % len(fails)]
    fallback: str  # "reraise" | "value" | "keyerror"
    actions: tuple[str | None, ...]  # what post returns on the k-th visit (cycled)
    items: int  # batch size
    delays: tuple[int, ...]  # loop turns before exec of item i finishes


@dataclass(frozen=True)
class FlowSpec:
    kind: str
    nodes: tuple[NodeSpec | FlowSpec, ...]
    edges: tuple[tuple[int, str, int], ...]  # (source, action, target)
    param_sets: int


# -- strategies --------------------------------------------------------------------


@st.composite
def node_specs(draw: st.DrawFn, kinds: list[str]) -> NodeSpec:
    return NodeSpec(
        kind=draw(st.sampled_from(kinds)),
        max_retries=draw(st.integers(0, 3)),
        fails=tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))),
        fallback=draw(st.sampled_from(["reraise", "value", "keyerror"])),
        actions=tuple(draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3))),
        items=draw(st.integers(0, 4)),
        delays=tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))),
    )


@st.composite
def flow_specs(draw: st.DrawFn, asynchronous: bool, depth: int = 2) -> FlowSpec:
    kind = draw(st.sampled_from(ASYNC_FLOWS if asynchronous else SYNC_FLOWS))
    node_kinds = SYNC_NODES + ASYNC_NODES if asynchronous else SYNC_NODES
    member = node_specs(node_kinds)
    if depth > 0:
        member = st.one_of(
            member,
            st.booleans().flatmap(lambda a: flow_specs(a and asynchronous, depth - 1)),
        )
    nodes = tuple(draw(st.lists(member, min_size=1, max_size=4)))
    n = len(nodes)
    edges = tuple(
        draw(
            st.lists(
                st.tuples(st.integers(0, n - 1), st.sampled_from(["default", "a", "b"]), st.integers(0, n - 1)),
                max_size=6,
                unique_by=lambda e: (e[0], e[1]),
            )
        )
    )
    return FlowSpec(kind=kind, nodes=nodes, edges=edges, param_sets=draw(st.integers(0, 3)))


programs = st.booleans().flatmap(lambda a: flow_specs(a))


# -- building a program from either module -------------------------------------------


async def ticks(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Program:
    """Builds a spec's classes from ``mod`` with per-run bookkeeping (visits, attempts)."""

    def __init__(self, mod: Any) -> None:
        self.mod = mod
        self.visits: dict[tuple[Any, ...], int] = {}
        self.attempts: dict[tuple[Any, ...], int] = {}
        self.finished: list[tuple[Any, ...]] = []  # exec calls, in the order they finished
        self.ids = 0

    def build(self, spec: NodeSpec | FlowSpec) -> Any:
        self.ids += 1
        ident = self.ids
        if isinstance(spec, FlowSpec):
            return self._flow(spec, ident)
        return self._node(spec, ident)

    def _flow(self, spec: FlowSpec, ident: int) -> Any:
        nodes = [self.build(member) for member in spec.nodes]
        for source, action, target in spec.edges:
            nodes[source] - action >> nodes[target]
        base = getattr(self.mod, spec.kind)
        param_sets = [{f"f{ident}": i} for i in range(spec.param_sets)]

        def budget(node: Any, shared: Any, action: Any) -> Any:
            # Flows count towards the step budget too: a batch flow with no param
            # set that loops on itself would otherwise never end.
            key = tuple(sorted(node.params.items()))
            shared["log"].append((ident, "flow-post", TRAIL.get()))
            shared["steps"][key] = shared["steps"].get(key, 0) + 1
            return "stop" if shared["steps"][key] > STEP_BUDGET else action

        methods: dict[str, Any] = {}
        if spec.kind.startswith("Async"):

            async def post_async(node: Any, shared: Any, prep_res: Any, exec_res: Any) -> Any:
                return budget(node, shared, exec_res)

            methods["post_async"] = post_async
        else:
            methods["post"] = lambda node, shared, prep_res, exec_res: budget(node, shared, exec_res)
        if "Batch" in spec.kind:
            if spec.kind.startswith("Async"):

                async def prep_async(node: Any, shared: Any) -> Any:
                    shared["log"].append((ident, "flow-prep", dict(node.params)))
                    return list(param_sets)

                methods["prep_async"] = prep_async
            else:

                def prep(node: Any, shared: Any) -> Any:
                    shared["log"].append((ident, "flow-prep", dict(node.params)))
                    return list(param_sets)

                methods["prep"] = prep
        return type(f"F{ident}", (base,), methods)(start=nodes[0])

    def _node(self, spec: NodeSpec, ident: int) -> Any:
        program = self
        batch = "Batch" in spec.kind

        def key(node: Any) -> tuple[Any, ...]:
            return (ident, tuple(sorted(node.params.items())))

        def prep_value(node: Any, shared: Any) -> Any:
            k = key(node)
            visit = program.visits.get(k, 0)
            program.visits[k] = visit + 1
            shared["log"].append((ident, "prep", dict(node.params), visit))
            mark(ident, "prep", visit)
            if batch:
                return [(k, visit, i) for i in range(spec.items)]
            return (k, visit, 0)

        def attempt(prep_res: Any) -> Any:
            k, visit, i = prep_res
            slot = (k, visit, i)
            done = program.attempts.get(slot, 0)
            program.attempts[slot] = done + 1
            program.finished.append((ident, k[1], visit, i, done))
            trail = mark(ident, i, done)
            if done < spec.fails[i % len(spec.fails)]:
                raise ValueError(f"node {ident} item {i} attempt {done}")
            return f"{ident}:{i}:{done}", trail

        def fallback_value(prep_res: Any, exc: Exception) -> Any:
            trail = mark(ident, "fallback")
            if spec.fallback == "value":
                return f"fallback {exc}", trail
            if spec.fallback == "keyerror":
                raise KeyError(f"fallback of node {ident}")
            raise exc

        def post_value(node: Any, shared: Any, prep_res: Any, exec_res: Any) -> Any:
            k = key(node)
            shared["log"].append((ident, "post", exec_res, TRAIL.get()))
            steps = shared["steps"].get(k[1], 0) + 1
            shared["steps"][k[1]] = steps
            if steps > STEP_BUDGET:
                return "stop"
            visit = prep_res[1] if not batch else program.visits[k] - 1
            return spec.actions[visit % len(spec.actions)]

        methods: dict[str, Any]
        if spec.kind.startswith("Async"):

            async def prep_async(node: Any, shared: Any) -> Any:
                return prep_value(node, shared)

            async def exec_async(node: Any, prep_res: Any) -> Any:
                await ticks(spec.delays[prep_res[2] % len(spec.delays)])
                return attempt(prep_res)

            async def exec_fallback_async(node: Any, prep_res: Any, exc: Exception) -> Any:
                return fallback_value(prep_res, exc)

            async def post_async(node: Any, shared: Any, prep_res: Any, exec_res: Any) -> Any:
                return post_value(node, shared, prep_res, exec_res)

            methods = {
                "prep_async": prep_async,
                "exec_async": exec_async,
                "exec_fallback_async": exec_fallback_async,
                "post_async": post_async,
            }
        else:
            methods = {
                "prep": lambda node, shared: prep_value(node, shared),
                "exec": lambda node, prep_res: attempt(prep_res),
                "exec_fallback": lambda node, prep_res, exc: fallback_value(prep_res, exc),
                "post": lambda node, shared, prep_res, exec_res: post_value(node, shared, prep_res, exec_res),
            }
        cls = type(f"N{ident}", (getattr(self.mod, spec.kind),), methods)
        return cls(max_retries=spec.max_retries)


def _has_parallel_flow(spec: NodeSpec | FlowSpec) -> bool:
    if isinstance(spec, NodeSpec):
        return False
    return spec.kind == "AsyncParallelBatchFlow" or any(_has_parallel_flow(m) for m in spec.nodes)


def run_program(mod: Any, spec: FlowSpec, loop_factory: Any) -> dict[str, Any]:
    """Run ``spec`` built from ``mod``, in a fresh context; return everything observable."""
    return contextvars.Context().run(_run_program, mod, spec, loop_factory)


def _run_program(mod: Any, spec: FlowSpec, loop_factory: Any) -> dict[str, Any]:
    program = Program(mod)
    flow = program.build(spec)
    shared: dict[str, Any] = {"log": [], "steps": {}}
    outcome: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if spec.kind.startswith("Async"):

                async def main() -> Any:
                    try:
                        return await flow.run_async(shared)
                    finally:
                        outcome["caller's trail"] = TRAIL.get()

                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    outcome["action"] = runner.run(main())
            else:
                try:
                    outcome["action"] = flow.run(shared)
                finally:
                    outcome["caller's trail"] = TRAIL.get()
        except Exception as exc:
            outcome["error"] = (type(exc), str(exc))
    outcome["warnings"] = [(w.category, str(w.message)) for w in caught]
    if "error" not in outcome or not _has_parallel_flow(spec):
        # PocketFlow leaves a failed parallel flow's siblings running (their posts
        # land in shared or not, depending on timing); the adapter cancels them.
        outcome["shared"] = shared
    if not _has_parallel_flow(spec) and ("error" not in outcome or "Parallel" not in repr(spec)):
        # The order in which exec calls ran, retries included.  Parallel items
        # start together, as under gather, so this matches for any delays.  Not
        # compared under a parallel flow: there a sub-flow's chain of calls that
        # do not suspend takes a few loop turns here (one crossing each) and none
        # in PocketFlow, so items of *different* delays may interleave otherwise;
        # the posts (in the shared log) still land in PocketFlow's order.  Nor
        # after a parallel item failed: PocketFlow lets its siblings run on.
        outcome["exec order"] = program.finished
    return outcome


LOOPS = {"asyncio": asyncio.SelectorEventLoop, "trio-asyncio": SyncTrioEventLoop}


# Nested parallel batch flows that loop: each parent must resume right after its last
# sub-flow, as gather wakes it, or the two parents' steps change places.
_NESTED_LOOPING_PARALLEL_FLOWS = FlowSpec(
    kind="AsyncParallelBatchFlow",
    nodes=(
        FlowSpec(
            kind="AsyncParallelBatchFlow",
            nodes=(NodeSpec("Node", 0, fails=(0,), fallback="reraise", actions=(None,), items=0, delays=(0,)),),
            edges=(),
            param_sets=1,
        ),
    ),
    edges=((0, "default", 0),),
    param_sets=2,
)


# A parallel flow whose sub-runs fail at their last step: PocketFlow's third sub-run still
# reaches the end of its inner BatchFlow (and warns) after the first failure; here it is cancelled.
_FAILED_PARALLEL_FLOW_SIBLING_WARNS = FlowSpec(
    kind="AsyncFlow",
    nodes=(
        FlowSpec(
            kind="AsyncParallelBatchFlow",
            nodes=(
                FlowSpec(
                    kind="BatchFlow",
                    nodes=(NodeSpec("Node", 0, fails=(0,), fallback="reraise", actions=(None,), items=0, delays=(0,)),),
                    edges=((0, "default", 0),),
                    param_sets=1,
                ),
                NodeSpec("Node", 0, fails=(0,), fallback="reraise", actions=(None,), items=0, delays=(0,)),
                NodeSpec("Node", 0, fails=(0,), fallback="reraise", actions=(None,), items=0, delays=(0,)),
                NodeSpec("Node", 1, fails=(1,), fallback="reraise", actions=(None,), items=0, delays=(0,)),
            ),
            edges=((0, "default", 3),),
            param_sets=3,
        ),
    ),
    edges=(),
    param_sets=0,
)


@given(spec=programs, loop=st.sampled_from(sorted(LOOPS)))
@example(spec=_NESTED_LOOPING_PARALLEL_FLOWS, loop="asyncio")
@example(spec=_NESTED_LOOPING_PARALLEL_FLOWS, loop="trio-asyncio")
@example(spec=_FAILED_PARALLEL_FLOW_SIBLING_WARNS, loop="asyncio")
@example(spec=_FAILED_PARALLEL_FLOW_SIBLING_WARNS, loop="trio-asyncio")
def test_random_programs_behave_as_on_pocketflow(spec: FlowSpec, loop: str) -> None:
    """Shared store, action, warnings and exception of a random program equal real PocketFlow's."""
    note(repr(spec))
    event(f"top level {spec.kind}")
    if _has_parallel_flow(spec):
        event("has an AsyncParallelBatchFlow")
    if "AsyncParallelBatchNode" in repr(spec):
        event("has an AsyncParallelBatchNode")
    theirs = run_program(real, spec, asyncio.SelectorEventLoop)
    ours = run_program(pf, spec, LOOPS[loop])
    event("raised" if "error" in theirs else "returned")
    if "shared" not in theirs:
        ours.pop("shared", None)
    if "error" in theirs and _has_parallel_flow(spec):
        # The failed parallel flow's siblings run on in PocketFlow (a warning each when they end
        # on an action with no successor) and are cancelled here: every warning of ours must be
        # one of PocketFlow's, and PocketFlow may have more.
        event("warnings compared as a sub-multiset")
        mine, real_ones = collections.Counter(ours.pop("warnings")), collections.Counter(theirs.pop("warnings"))
        assert mine <= real_ones, (mine, real_ones)
    if _parallel_flow_under_parallel_flow(spec) and "shared" in theirs:
        # Sub-flows of *different* parallel flows that run at once interleave as asyncio's
        # scheduler happens to order their tasks: PocketFlow promises no order between them,
        # and the adapter, whose crossings take loop turns of their own, matches it in about
        # 999 programs of 1,000 (measured over 48,000).  Their log entries are compared as a
        # multiset there; everything else (the other keys of shared, each entry, the action,
        # the warnings, the exception) stays exact.
        event("log compared as a multiset")
        for outcome in (ours, theirs):
            outcome["shared"] = {**outcome["shared"], "log": sorted(outcome["shared"]["log"], key=repr)}
    assert ours == theirs


def _parallel_flow_under_parallel_flow(spec: NodeSpec | FlowSpec, under_parallel: bool = False) -> bool:
    """Whether an AsyncParallelBatchFlow runs inside the sub-flow of another one."""
    if isinstance(spec, NodeSpec):
        return False
    parallel = spec.kind == "AsyncParallelBatchFlow"
    if parallel and under_parallel:
        return True
    return any(_parallel_flow_under_parallel_flow(member, under_parallel or parallel) for member in spec.nodes)


# -- a cancel of the caller ------------------------------------------------------------


def run_cancelled(mod: Any, kind: str, swallow: bool, how: str, loop_factory: Any) -> dict[str, Any]:
    """A two-node AsyncFlow whose first node waits in exec_async until its caller is cancelled.

    ``swallow``: exec_async catches the ``CancelledError`` and returns;
    ``how``: ``"cancel"`` (``task.cancel()`` once every item started waits,
    again whenever another one starts waiting) or ``"wait_for"``
    (``asyncio.wait_for`` times out).  Returns the shared store and what the
    caller got.
    """
    started: list[int] = []
    items = 3 if "Batch" in kind else 1

    class Work(getattr(mod, kind)):  # type: ignore[misc]
        async def prep_async(self, shared: Any) -> Any:
            return list(range(items)) if "Batch" in kind else 0

        async def exec_async(self, item: int) -> str:
            started.append(item)
            try:
                await asyncio.get_running_loop().create_future()  # forever
            except asyncio.CancelledError:
                if not swallow:
                    raise
                return f"recovered {item}"
            return "unreachable"

        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
            shared["work"] = exec_res
            return "next"

    class After(mod.AsyncNode):  # type: ignore[misc]
        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
            shared["after"] = True
            return "end"

    work = Work()
    work - "next" >> After()
    flow = mod.AsyncFlow(start=work)

    async def main() -> dict[str, Any]:
        shared: dict[str, Any] = {}
        try:
            if how == "wait_for":
                result = await asyncio.wait_for(flow.run_async(shared), 0.05)
            else:
                task = asyncio.ensure_future(flow.run_async(shared))
                cancels = 0
                while not task.done():
                    # Parallel items all start before the first cancel; items
                    # one after another each get theirs when they start waiting.
                    if len(started) > cancels and (kind != "AsyncParallelBatchNode" or len(started) == items):
                        task.cancel()
                        cancels = len(started)
                    await asyncio.sleep(0)
                result = await task
        except (asyncio.CancelledError, TimeoutError) as exc:
            result = type(exc).__name__
        return {"shared": shared, "result": result, "started": sorted(started)}

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())  # type: ignore[no-any-return]


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize(
    ("kind", "swallow", "how"),
    [
        (kind, swallow, how)
        for kind in ("AsyncNode", "AsyncBatchNode", "AsyncParallelBatchNode")
        for swallow in (True, False)
        for how in ("cancel", "wait_for")
        # wait_for cancels once: the next item of a sequential batch would wait forever, on PocketFlow too
        if not (kind == "AsyncBatchNode" and swallow and how == "wait_for")
    ],
)
def test_caller_cancel_lands_as_on_pocketflow(kind: str, swallow: bool, how: str, loop: str) -> None:
    """A cancel of run_async's caller lands in the waiting exec_async: swallowed, the flow goes on, as in PocketFlow."""
    theirs = run_cancelled(real, kind, swallow, how, asyncio.SelectorEventLoop)
    ours = run_cancelled(pf, kind, swallow, how, LOOPS[loop])
    assert ours == theirs
