"""Node: user methods in both styles, run(), wiring, and the retry/timeout policy."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pocketflow
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioflow
from tests.strategies import retry_delays


def run_with_autojump(fn: Callable[..., Any], *args: Any) -> Any:
    """``trio.run`` on a fresh autojump clock: for Hypothesis tests, where fixtures are shared across examples."""
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


class Interrupt(BaseException):
    """A KeyboardInterrupt-like BaseException that the retry policy must leave alone."""


# -- prep / exec / post as async def or plain def, in every node kind -----------------------


def _style(is_async: bool, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as a plain method, or wrapped in an ``async def`` that really awaits."""
    if not is_async:
        return fn

    async def method(self: Any, *args: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(self, *args)

    return method


def _step_class(base: type[trioflow.Node], prep_a: bool, exec_a: bool, post_a: bool) -> type[trioflow.Node]:
    """A node that doubles ``params["x"]`` (or ``shared["x"]``, or each of ``shared["xs"]``)."""
    batch = issubclass(base, trioflow.BatchNode)

    def prep(self: Any, shared: dict[str, Any]) -> Any:
        if batch:
            return shared["xs"]
        return self.params.get("x", shared.get("x"))

    def exec_(self: Any, x: int) -> int:
        return x * 2

    def post(self: Any, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared.setdefault("out", []).append(exec_res)
        return "stepped"

    return type(
        "Step",
        (base,),
        {"prep": _style(prep_a, prep), "exec": _style(exec_a, exec_), "post": _style(post_a, post)},
    )


def _flow_class(base: type[trioflow.Flow], prep_a: bool, post_a: bool) -> type[trioflow.Flow]:
    """A flow whose prep yields two param sets (used only by the batch flows) and whose post reports."""

    def prep(self: Any, shared: dict[str, Any]) -> Any:
        return [{"x": 1}, {"x": 2}]

    def post(self: Any, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared["flow_post"] = (prep_res, exec_res)
        return "flowed"

    return type("MyFlow", (base,), {"prep": _style(prep_a, prep), "post": _style(post_a, post)})


STYLES = list(itertools.product([False, True], repeat=3))
STYLE_IDS = [
    "-".join(f"{'async' if a else 'sync'}_{m}" for a, m in zip(style, ("prep", "exec", "post"), strict=True))
    for style in STYLES
]


class TestMethodStyles:
    @pytest.mark.parametrize(("prep_a", "exec_a", "post_a"), STYLES, ids=STYLE_IDS)
    async def test_Node_runs_sync_and_async_methods(self, prep_a: bool, exec_a: bool, post_a: bool) -> None:
        """A Node's prep, exec and post may each be async def or plain def."""
        shared: dict[str, Any] = {"x": 21}
        action = await _step_class(trioflow.Node, prep_a, exec_a, post_a)().run(shared)
        assert action == "stepped"
        assert shared["out"] == [42]

    @pytest.mark.parametrize("kind", [trioflow.BatchNode, trioflow.ParallelBatchNode])
    @pytest.mark.parametrize(("prep_a", "exec_a", "post_a"), STYLES, ids=STYLE_IDS)
    async def test_BatchNode_kinds_run_sync_and_async_methods(
        self, kind: type[trioflow.Node], prep_a: bool, exec_a: bool, post_a: bool
    ) -> None:
        """BatchNode and ParallelBatchNode take prep, exec and post in either style."""
        shared: dict[str, Any] = {"xs": [1, 2, 3]}
        action = await _step_class(kind, prep_a, exec_a, post_a)().run(shared)
        assert action == "stepped"
        assert shared["out"] == [[2, 4, 6]]

    @pytest.mark.parametrize("kind", [trioflow.Flow, trioflow.BatchFlow, trioflow.ParallelBatchFlow])
    @pytest.mark.parametrize(("prep_a", "exec_a", "post_a"), STYLES, ids=STYLE_IDS)
    async def test_Flow_kinds_run_sync_and_async_methods(
        self, kind: type[trioflow.Flow], prep_a: bool, exec_a: bool, post_a: bool
    ) -> None:
        """Flow, BatchFlow and ParallelBatchFlow take prep and post in either style, and so do their steps."""
        shared: dict[str, Any] = {"x": 5}
        flow = _flow_class(kind, prep_a, post_a)(start=_step_class(trioflow.Node, prep_a, exec_a, post_a)())
        action = await flow.run(shared)
        assert action == "flowed"
        param_sets = [{"x": 1}, {"x": 2}]
        if kind is trioflow.Flow:
            assert shared["out"] == [10]
            assert shared["flow_post"] == (param_sets, "stepped")
        else:
            assert sorted(shared["out"]) == [2, 4]
            assert shared["flow_post"] == (param_sets, ["stepped", "stepped"])  # each run's last action


# -- run() --------------------------------------------------------------------------------


class Echo(trioflow.Node):
    """Returns ``params["action"]`` (default None) and counts its runs in ``shared``."""

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        shared.setdefault("ran", []).append(self.params.get("name", type(self).__name__))
        return self.params.get("action")


class TestRun:
    async def test_Node_run_returns_the_action_of_post(self) -> None:
        """run() returns what post returns."""
        assert await Echo(params={"action": "next"}).run({}) == "next"
        assert await Echo().run({}) is None

    async def test_Node_run_warns_that_it_wont_run_successors(self) -> None:
        """Running alone a node that has successors warns and runs only that node."""
        a, b = Echo(params={"name": "a"}), Echo(params={"name": "b"})
        a >> b
        shared: dict[str, Any] = {}
        with pytest.warns(UserWarning, match="won't run successors") as record:
            await a.run(shared)
        assert shared["ran"] == ["a"]
        assert record[0].filename == __file__

    async def test_Node_run_without_successors_does_not_warn(self) -> None:
        """A lone node with no successors runs without a warning (filterwarnings=error would fail it)."""
        assert await Echo(params={"action": "x"}).run({}) == "x"

    async def test_Node_run_is_a_checkpoint(self) -> None:
        """Even with only plain-def methods, run() is a full Trio checkpoint (it yields to the scheduler)."""
        with trio.testing.assert_checkpoints():
            await Echo().run({})

    async def test_Node_run_is_a_checkpoint_even_if_its_async_methods_never_yield(self) -> None:
        """run() is a full checkpoint for a node whose async exec returns without awaiting anything."""

        class Quick(Echo):
            async def exec(self, prep_res: Any) -> None:
                return None

        with trio.testing.assert_checkpoints():
            await Quick().run({})

    def test_run_from_sync_code(self) -> None:
        """trioflow.run runs a flow from plain synchronous code and returns its last action."""

        class Last(Echo):
            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
                super().post(shared, prep_res, exec_res)
                return "end"

        a = Echo()
        a >> Last()
        shared: dict[str, Any] = {}
        assert trioflow.run(trioflow.Flow(start=a), shared) == "end"
        assert shared["ran"] == ["Echo", "Last"]
        assert trioflow.run(Last(), {}) == "end"

    @pytest.mark.parametrize("durable", [False, True])
    def test_run_error_has_no_unrelated_context(self, durable: bool, tmp_path: Path) -> None:
        """An error from the run leaves trioflow.run with no __context__ from its inside-Trio check."""

        class Fails(Echo):
            def exec(self, prep_res: Any) -> None:
                raise KeyError("boom")

        options: dict[str, Any] = {"store": tmp_path / "s.db", "run_id": "r"} if durable else {}
        with pytest.raises(KeyError) as info:
            trioflow.run(Fails(), {}, **options)
        assert info.value.__context__ is None

    def test_run_rejects_a_non_node(self) -> None:
        """trioflow.run says what it got when it is not a node."""
        with pytest.raises(TypeError, match="trioflow Node or Flow"):
            trioflow.run(lambda: None, {})  # type: ignore[arg-type]


# -- retry policy -------------------------------------------------------------------------


class Flaky(trioflow.Node):
    """Fails its first ``params["failures"]`` attempts; records attempts, fallback calls and times."""

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return shared

    async def exec(self, shared: dict[str, Any]) -> str:
        shared.setdefault("attempts", []).append((self.cur_retry, trio.current_time()))
        await trio.sleep(shared.get("exec_time", 0))
        if len(shared["attempts"]) <= shared.get("failures", math.inf):
            raise shared.get("error", ValueError)(f"attempt {self.cur_retry}")
        return "ok"

    def exec_fallback(self, shared: dict[str, Any], exc: Exception) -> Any:
        shared.setdefault("fallback", []).append(exc)
        if shared.get("fallback_reraises"):
            raise exc
        return "fallback"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["result"] = exec_res


class TestRetry:
    @given(max_retries=st.integers(1, 6), failures=st.integers(0, 8))
    def test_Node_max_retries_counts_attempts_like_pocketflow(self, max_retries: int, failures: int) -> None:
        """max_retries is the number of attempts, and the fallback is called as PocketFlow calls it."""

        class PFFlaky(pocketflow.Node):  # type: ignore[misc]
            def exec(self, shared: dict[str, Any]) -> str:
                shared.setdefault("attempts", []).append(self.cur_retry)
                if len(shared["attempts"]) <= failures:
                    raise ValueError(f"attempt {self.cur_retry}")
                return "ok"

            def exec_fallback(self, shared: dict[str, Any], exc: Exception) -> str:
                shared.setdefault("fallback", []).append(exc)
                return "fallback"

            def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
                return shared

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["result"] = exec_res

        oracle: dict[str, Any] = {}
        PFFlaky(max_retries=max_retries).run(oracle)
        ours: dict[str, Any] = {"failures": failures}
        run_with_autojump(Flaky(max_retries=max_retries).run, ours)

        assert [attempt for attempt, _ in ours["attempts"]] == oracle["attempts"]
        assert ours["result"] == oracle["result"]
        assert [str(e) for e in ours.get("fallback", [])] == [str(e) for e in oracle.get("fallback", [])]

    @given(max_retries=st.integers(1, 6), wait=retry_delays, backoff=st.floats(0.25, 4.0))
    def test_Node_wait_grows_by_backoff(self, max_retries: int, wait: float, backoff: float) -> None:
        """The wait before retry k (0-based) is wait * backoff**k."""
        shared: dict[str, Any] = {}
        run_with_autojump(Flaky(max_retries=max_retries, wait=wait, backoff=backoff).run, shared)
        times = [t for _, t in shared["attempts"]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) == max_retries
        assert gaps == pytest.approx([wait * backoff**k for k in range(max_retries - 1)], rel=1e-9, abs=1e-9)

    @given(wait=retry_delays, backoff=st.floats(0.5, 2.0), jitter=st.floats(0.01, 5.0))
    def test_Node_jitter_adds_a_random_delay_below_jitter(self, wait: float, backoff: float, jitter: float) -> None:
        """Jitter adds a uniform [0, jitter) to each wait, and it does vary the waits."""
        shared: dict[str, Any] = {}
        run_with_autojump(Flaky(max_retries=12, wait=wait, backoff=backoff, jitter=jitter).run, shared)
        times = [t for _, t in shared["attempts"]]
        # the policy wait is capped at one day before the jitter is added
        extras = [b - a - min(wait * backoff**k, 86_400) for k, (a, b) in enumerate(itertools.pairwise(times))]
        assert all(-1e-9 <= extra <= jitter + 1e-9 for extra in extras)
        assert len(set(extras)) > 1

    async def test_Node_timeout_bounds_each_attempt_then_falls_back(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A timed-out attempt is retried; when all time out, exec_fallback gets trio.TooSlowError."""
        shared: dict[str, Any] = {"exec_time": 10}
        start = trio.current_time()
        await Flaky(max_retries=3, wait=1, timeout=2).run(shared)
        assert [t - start for _, t in shared["attempts"]] == pytest.approx([0, 3, 6])
        assert [type(e) for e in shared["fallback"]] == [trio.TooSlowError]
        assert shared["result"] == "fallback"
        assert trio.current_time() - start == pytest.approx(8)

    async def test_Node_timeout_then_success(self, autojump_clock: trio.testing.MockClock) -> None:
        """An attempt that beats the timeout after one that did not is the result."""

        class SlowThenFast(Flaky):
            async def exec(self, shared: dict[str, Any]) -> str:
                shared.setdefault("attempts", []).append((self.cur_retry, trio.current_time()))
                await trio.sleep(5 if self.cur_retry == 0 else 1)
                return "ok"

        shared: dict[str, Any] = {}
        await SlowThenFast(max_retries=2, timeout=2).run(shared)
        assert shared["result"] == "ok"
        assert len(shared["attempts"]) == 2
        assert "fallback" not in shared

    async def test_Node_retry_on_retries_only_matching_errors(self) -> None:
        """An error outside retry_on goes straight to exec_fallback; a matching one is retried."""
        shared: dict[str, Any] = {"error": ValueError}
        await Flaky(max_retries=4, retry_on=(KeyError, LookupError)).run(shared)
        assert len(shared["attempts"]) == 1
        assert [type(e) for e in shared["fallback"]] == [ValueError]

        shared = {"error": KeyError}
        await Flaky(max_retries=4, retry_on=LookupError).run(shared)
        assert len(shared["attempts"]) == 4
        assert [type(e) for e in shared["fallback"]] == [KeyError]

    async def test_Node_exec_fallback_return_stands_in_for_exec(self) -> None:
        """post receives what exec_fallback returns once the attempts are used up."""
        shared: dict[str, Any] = {}
        await Flaky(max_retries=2).run(shared)
        assert shared["result"] == "fallback"
        assert len(shared["fallback"]) == 1

    async def test_Node_default_exec_fallback_reraises_the_last_error(self) -> None:
        """Without an exec_fallback, the last attempt's exception propagates as it is."""
        errors: list[Exception] = []

        class Failing(trioflow.Node):
            def exec(self, prep_res: Any) -> None:
                errors.append(RuntimeError(self.cur_retry))
                raise errors[-1]

        with pytest.raises(RuntimeError) as info:
            await Failing(max_retries=3).run({})
        assert info.value is errors[-1]
        assert len(errors) == 3

    async def test_Node_cur_retry_counts_attempts(self) -> None:
        """Inside exec, cur_retry is the 0-based attempt."""
        shared: dict[str, Any] = {"failures": 2}
        await Flaky(max_retries=5).run(shared)
        assert [a for a, _ in shared["attempts"]] == [0, 1, 2]
        assert shared["result"] == "ok"

    async def test_ParallelBatchNode_cur_retry_is_per_item(self, autojump_clock: trio.testing.MockClock) -> None:
        """Two items of one batch at different attempts each see their own cur_retry, across awaits."""
        seen: list[tuple[str, int, int]] = []

        class PerItem(trioflow.ParallelBatchNode):
            def prep(self, shared: Any) -> list[tuple[str, int, float]]:
                # (name, failures before success, sleep inside exec)
                return [("slow", 1, 3.0), ("fast", 3, 0.5)]

            async def exec(self, item: tuple[str, int, float]) -> str:
                name, failures, nap = item
                before = self.cur_retry
                await trio.sleep(nap)  # the other item runs and retries meanwhile
                seen.append((name, before, self.cur_retry))
                if self.cur_retry < failures:
                    raise ValueError(name)
                return f"{name}@{self.cur_retry}"

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> None:
                shared["out"] = exec_res

        shared: dict[str, Any] = {}
        await PerItem(max_retries=4).run(shared)
        assert shared["out"] == ["slow@1", "fast@3"]
        assert all(before == after for _, before, after in seen)
        assert [a for n, a, _ in seen if n == "fast"] == [0, 1, 2, 3]
        assert [a for n, a, _ in seen if n == "slow"] == [0, 1]

    @pytest.mark.parametrize("attempt_timeout", [None, 50])
    async def test_Node_does_not_retry_an_outside_cancel(
        self, attempt_timeout: float | None, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A cancel from outside is not retried, not passed to exec_fallback (nor made a TooSlowError), no post."""
        shared: dict[str, Any] = {"exec_time": 100, "failures": 0}
        with trio.move_on_after(1) as scope:
            await Flaky(max_retries=5, timeout=attempt_timeout).run(shared)
        assert scope.cancelled_caught
        assert len(shared["attempts"]) == 1
        assert "fallback" not in shared
        assert "result" not in shared

    async def test_Node_cancel_during_the_retry_wait_stops_retrying(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An outside cancel while waiting to retry ends the node: no next attempt, no fallback, no post."""
        shared: dict[str, Any] = {}
        with trio.move_on_after(5) as scope:
            await Flaky(max_retries=3, wait=10).run(shared)
        assert scope.cancelled_caught
        assert len(shared["attempts"]) == 1
        assert "fallback" not in shared
        assert "result" not in shared

    @pytest.mark.parametrize("kind", [trioflow.Node, trioflow.BatchNode])
    async def test_Node_base_exception_is_not_retried_nor_wrapped(self, kind: type[trioflow.Node]) -> None:
        """A BaseException that is not an Exception propagates unwrapped after one attempt, no fallback."""
        calls: list[str] = []

        class Interrupted(kind):  # type: ignore[valid-type,misc]
            def prep(self, shared: Any) -> Any:
                return [1] if isinstance(self, trioflow.BatchNode) else 1

            def exec(self, prep_res: Any) -> None:
                calls.append("exec")
                raise Interrupt

            def exec_fallback(self, prep_res: Any, exc: Exception) -> None:
                calls.append("fallback")

            def post(self, shared: Any, prep_res: Any, exec_res: Any) -> None:
                calls.append("post")

        with pytest.raises(Interrupt) as info:
            await Interrupted(max_retries=3, retry_on=Exception).run({})
        assert type(info.value) is Interrupt
        assert calls == ["exec"]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_retries", 0),
            ("max_retries", -1),
            ("max_retries", 1.5),
            ("max_retries", True),
            ("wait", -1),
            ("wait", math.inf),
            ("wait", math.nan),
            ("wait", "1"),
            ("backoff", 0),
            ("backoff", -2),
            ("backoff", math.inf),
            ("jitter", -0.1),
            ("timeout", 0),
            ("timeout", -1),
            ("timeout", math.nan),
            ("timeout", "5"),
        ],
    )
    def test_Node_rejects_bad_policy_values(self, field: str, value: Any) -> None:
        """Bad retry/timeout values are a ValueError naming the node class and the field."""

        class MyNode(trioflow.Node):
            pass

        with pytest.raises(ValueError, match=rf"MyNode\.{field}"):
            MyNode(**{field: value})

    @pytest.mark.parametrize("value", [(BaseException,), (trio.Cancelled,), KeyboardInterrupt, ("ValueError",), (1,)])
    def test_Node_retry_on_takes_Exception_subclasses_only(self, value: Any) -> None:
        """retry_on refuses BaseExceptions (never retried) and non-types, naming the node."""

        class MyNode(trioflow.Node):
            pass

        with pytest.raises(TypeError, match=r"MyNode\.retry_on"):
            MyNode(retry_on=value)

    def test_Node_retry_on_accepts_a_single_type(self) -> None:
        """retry_on=KeyError means (KeyError,)."""
        assert trioflow.Node(retry_on=KeyError).retry_on == (KeyError,)


# -- wiring -------------------------------------------------------------------------------


class A(trioflow.Node):
    pass


class B(trioflow.Node):
    pass


class TestClassAttributeOptions:
    def test_class_attributes_are_the_constructors_defaults(self) -> None:
        """An option set in the class body is the default; a constructor argument wins over it."""

        class Embed(trioflow.ParallelBatchNode):
            version = "2"
            max_concurrency = 16
            max_retries = 3
            retry_on = (ValueError,)

        assert (Embed().version, Embed().max_concurrency, Embed().max_retries) == ("2", 16, 3)
        assert Embed().retry_on == (ValueError,)
        assert Embed(max_concurrency=4, version="3").max_concurrency == 4
        assert Embed(version="3").version == "3"

    def test_class_attribute_defaults_are_inherited_and_overridden(self) -> None:
        """A subclass inherits its base's class-attribute options and may set its own; an attrs
        field redeclared in a subclass takes its own default."""

        class Base(trioflow.Node):
            timeout = 5.0
            version = "1"

        class Child(Base):
            version = "2"

        @attrs.define(slots=False, eq=False, kw_only=True)
        class Typed(Child):
            model: str = "small"
            version: str = "9"

        assert (Child().timeout, Child().version) == (5.0, "2")
        assert (Typed().timeout, Typed().version, Typed().model) == (5.0, "9", "small")
        assert Typed(model="big", timeout=1.0).timeout == 1.0

    def test_class_attribute_options_are_checked_naming_the_node(self) -> None:
        """A bad option in the class body is the same ValueError as a bad constructor argument."""

        class Bad(trioflow.ParallelBatchNode):
            max_concurrency = 0

        with pytest.raises(ValueError, match=r"Bad: max_concurrency must be an int >= 1 or None, not 0"):
            Bad()

    def test_class_attribute_params_are_copied_per_node(self) -> None:
        """A dict in the class body is each node's own copy, as a default factory would give."""

        class WithParams(trioflow.Node):
            params = {"model": "small"}  # noqa: RUF012 - the mutable class attribute is the point

        a, b = WithParams(), WithParams()
        a.params["model"] = "big"
        assert b.params == {"model": "small"} and WithParams.params == {"model": "small"}

    def test_own_init_sees_class_attribute_options_it_does_not_pass(self) -> None:
        """A PocketFlow-style ``__init__`` that calls super().__init__(max_retries=3) gets its
        class's other options, and its own argument wins."""

        class Styled(trioflow.Node):
            wait = 2.0
            max_retries = 9

            def __init__(self) -> None:
                super().__init__(max_retries=3)

        assert (Styled().wait, Styled().max_retries) == (2.0, 3)

    def test_slotted_attrs_subclass_takes_an_unannotated_option(self) -> None:
        """An option in the body of an ``@attrs.define`` (slotted) subclass is its default, over its base's."""

        class Base(trioflow.ParallelBatchNode):
            max_concurrency = 16

        @attrs.define
        class Slotted(trioflow.ParallelBatchNode):
            model: str = "x"
            max_concurrency = 8

        @attrs.define
        class SlottedOverBase(Base):
            max_concurrency = 8

        assert Slotted().max_concurrency == 8 and Slotted().model == "x"
        assert SlottedOverBase().max_concurrency == 8

    def test_attrs_subclass_with_its_own_init_gets_the_options_through_attrs_init(self) -> None:
        """An attrs subclass that writes its own ``__init__`` (calling ``__attrs_init__``) still constructs,
        and the class-attribute options reach the node."""

        class Base(trioflow.ParallelBatchNode):
            version = "2"

        @attrs.define(slots=False, eq=False, kw_only=True)
        class OwnInit(Base):
            model: str = "small"

            def __init__(self, model: str) -> None:
                self.__attrs_init__(model=model, max_concurrency=4)

        node = OwnInit("big")
        assert (node.model, node.version, node.max_concurrency) == ("big", "2", 4)

    def test_option_values_that_are_classes_mixins_and_diamonds_resolve_as_python_does(self) -> None:
        """``retry_on = ValueError`` (a class) is an option; a mixin's options count; in a diamond the
        value is the one Python's attribute lookup gives."""

        class Retrying:
            max_retries = 5
            wait = 1.0

        class Call(Retrying, trioflow.Node):
            retry_on = ValueError

        class A(trioflow.Node):
            wait = 1.0

        class B(A):
            pass

        class M(A):
            wait = 2.0

        class C(B, M):
            pass

        assert (Call().max_retries, Call().wait, Call().retry_on) == (5, 1.0, (ValueError,))
        assert C().wait == C.wait == 2.0

    def test_flow_start_as_a_class_attribute_and_as_an_argument(self) -> None:
        """A Flow subclass's ``start_node`` (or ``start``) in the class body is its default start; a start
        given positionally wins without a "multiple values" error."""
        first, second = A(), B()

        class ByName(trioflow.Flow):
            start_node = first

        class ByAlias(trioflow.Flow):
            start = first

        assert ByName().start_node is first and ByAlias().start_node is first
        assert ByName(second).start_node is second and ByAlias(second).start_node is second

    def test_methods_and_properties_named_like_options_are_left_alone(self) -> None:
        """Only plain values are options: a property of an option's name is not taken as a default."""

        class Computed(trioflow.Node):
            @property
            def durable(self) -> bool:  # type: ignore[override]
                return False

        with pytest.raises(AttributeError):
            Computed()

    async def test_class_attribute_version_changes_a_durable_runs_keys(self, tmp_path: Path) -> None:
        """A version bumped in the class body makes a durable run redo its items, not replay the old results."""
        calls: list[int] = []

        def make(bumped: str, factor: int) -> trioflow.ParallelBatchNode:
            class Mult(trioflow.ParallelBatchNode):
                version = bumped

                def prep(self, shared: dict[str, Any]) -> list[int]:
                    return [1, 2, 3]

                async def exec(self, item: int) -> int:
                    calls.append(item)
                    return item * factor

                def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
                    shared["out"] = exec_res

            return Mult()

        shared: dict[str, Any] = {}
        await make("1", 10).run(shared, store=tmp_path / "s.db", run_id="r")
        await make("1", 10).run(shared, store=tmp_path / "s.db", run_id="r")  # replayed: no exec
        assert shared["out"] == [10, 20, 30] and sorted(calls) == [1, 2, 3]
        await make("2", 100).run(shared, store=tmp_path / "s.db", run_id="r")
        assert shared["out"] == [100, 200, 300] and sorted(calls) == [1, 1, 2, 2, 3, 3]


class TestWiring:
    def test_rshift_returns_the_target_and_chains(self) -> None:
        """a >> b >> c wires a->b->c on "default" and evaluates to c."""
        a, b, c = A(), B(), B()
        assert (a >> b >> c) is c
        assert a.successors == {"default": b}
        assert b.successors == {"default": c}

    def test_action_transition_returns_the_target(self) -> None:
        """a - "x" >> b wires b on action "x" and evaluates to b."""
        a, b = A(), B()
        assert (a - "x" >> b) is b
        assert a.successors == {"x": b}

    @pytest.mark.parametrize("target", [3, "node", None, lambda: None, A])
    def test_wiring_to_a_non_node_is_a_TypeError_naming_the_node(self, target: Any) -> None:
        """>> and - "action" >> refuse a target that is not a node instance, naming the source node."""
        with pytest.raises(TypeError, match=r"A.*successor must be a trioflow Node"):
            A() >> target
        with pytest.raises(TypeError, match=r"A - 'go'.*successor must be a trioflow Node"):
            A() - "go" >> target

    @pytest.mark.parametrize("action", [3, None, b"go", ("go",)])
    def test_wiring_with_a_non_string_action_is_a_TypeError(self, action: Any) -> None:
        """A non-string action is refused at wiring time, naming the node."""
        with pytest.raises(TypeError, match=r"A - .*action must be a str"):
            A() - action >> B()
        with pytest.raises(TypeError, match="A: an action must be a str"):
            A().next(B(), action)

    def test_rewiring_an_action_warns(self) -> None:
        """Wiring a second successor for the same action warns and keeps the new one."""
        a, b, c = A(), B(), B()
        a >> b
        with pytest.warns(UserWarning, match="overwriting successor for action 'default'") as record:
            a >> c
        assert record[0].filename == __file__
        a - "x" >> b
        with pytest.warns(UserWarning, match="action 'x'"):
            a - "x" >> c
        assert a.successors == {"default": c, "x": c}
