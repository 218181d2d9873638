"""Durable runs in one process: trioflow.store (SQLiteStore, the command line) and what a run records.

The kill-and-resume tests with real processes are in tests/test_store_kill.py.
Stores here are real SQLite files; mock-clock runs still talk to a real writer thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import json
import os
import pickle
import pty
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow
from tests import strategies as sts
from trioflow import _durable
from trioflow.store import SCHEMA_VERSION, LeaseError, SQLiteStore, StoreError, main

ROOT = Path(__file__).resolve().parent.parent


def mock_run(main: Callable[[], Any]) -> Any:
    """``trio.run(main)`` on a fresh autojumping MockClock."""
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def without_root_overrides() -> None:
    """In a child about to exec: as root, give up the capabilities that ignore file permissions
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), so a read-only directory is read-only."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def rows(path: Path, sql: str, *args: Any) -> list[Any]:
    """Read the store with a connection of our own, as another process would."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(sql, args).fetchall()


def dead_pid() -> int:
    """The pid of a process of this host that has exited and been waited for."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout)


def hold_lease(path: Path, owner: str, until: float) -> None:
    """Make every run of the store look held by ``owner`` until ``until`` (as a process that died would leave it)."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE runs SET owner = ?, lease_until = ?, status = 'running'", (owner, until))


def recorded_keys(path: Path, run_id: str, status: int = 0) -> set[str]:
    found = rows(
        path,
        "SELECT key FROM results JOIN nodes USING (node_id) WHERE run_id = ? AND status = ?",
        run_id,
        status,
    )
    return {key for (key,) in found}


class Calls(list[Any]):
    """The exec calls a test's nodes made (shared by the copies a flow makes of a node)."""


class EchoMethods:
    """Items ``shared["items"]``; exec sleeps ``item % 3`` units (params["unit"] seconds, default 0) and returns
    ``[item, "v"]``;
    ``stop`` (a cancel scope) is cancelled when ``stop_at`` calls have started."""

    params: dict[str, Any]

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    async def exec(self, item: Any) -> Any:
        calls: Calls = self.params["calls"]
        calls.append(item)
        if len(calls) == self.params.get("stop_at"):
            self.params["stop"].cancel()
        await trio.sleep((item % 3) * self.params.get("unit", 0) if isinstance(item, int) else 0)
        return [item, "v"]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Any]) -> None:
        shared["results"] = exec_res


class Echo(EchoMethods, trioflow.ParallelBatchNode):
    """The parallel kind of :class:`EchoMethods`."""


class SeqEcho(EchoMethods, trioflow.BatchNode):
    """The sequential kind of :class:`EchoMethods`."""


def echo(calls: Calls, unit: float = 0, **options: Any) -> Echo:
    node = Echo(**options)
    node.set_params({"calls": calls, "unit": unit})
    return node


# -- the store itself ---------------------------------------------------------------------------------------


class TestSQLiteStore:
    def test_SQLiteStore_creates_its_schema_at_user_version_in_WAL_mode(self, tmp_path: Path) -> None:
        """A new file gets the four tables, PRAGMA user_version = SCHEMA_VERSION, and WAL journaling."""
        path = tmp_path / "runs.db"
        conn = SQLiteStore(path).open()
        conn.close()
        assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert rows(path, "PRAGMA journal_mode") == [("wal",)]
        tables = {name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "nodes", "results", "steps"} <= tables

    def test_SQLiteStore_refuses_a_store_of_a_newer_schema(self, tmp_path: Path) -> None:
        """A file whose user_version is beyond this trioflow's is a StoreError naming it, left untouched."""
        path = tmp_path / "runs.db"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        with pytest.raises(StoreError, match=f"{path}.*newer trioflow"):
            SQLiteStore(path).open()
        assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]

    def test_SQLiteStore_runs_nodes_steps_forget_prune(self, tmp_path: Path) -> None:
        """The script API sees a run's batches and steps; forget deletes it; prune drops what is stale."""
        path = tmp_path / "runs.db"
        store = SQLiteStore(path)
        calls = Calls()
        flow = trioflow.Flow(start=Echo(max_concurrency=2))
        flow.set_params({"calls": calls})  # a flow's params are its steps'
        trioflow.run(flow, {"items": [1, 2, 3]}, store=store, run_id="a")
        trioflow.run(flow, {"items": [1, 2, 4]}, store=store, run_id="a")  # 3 goes stale, 4 is new
        (run,) = store.runs()
        assert (run.run_id, run.status, run.gen, run.done, run.failed, run.steps) == ("a", "finished", 2, 4, 0, 1)
        (node,) = store.nodes("a")
        assert (node.place, node.finished, node.done, node.stale) == ("Flow/Echo_1", True, 4, 1)
        assert [(s.node, s.action, s.keys) for s in store.steps("a")] == [("Flow/Echo_1", None, "results")]
        assert store.prune() == {"results": 1, "nodes": 0, "steps": 0}  # past steps went when gen 2 began
        assert recorded_keys(path, "a") == {"1", "2", "4"}
        assert store.forget("a") is True
        assert store.runs() == [] and store.forget("a") is False


class TestLease:
    async def test_lease_a_second_run_of_one_run_id_gets_LeaseError_and_runs_nothing(self, tmp_path: Path) -> None:
        """While one run holds run_id, another (here in the same process) is refused before any exec."""
        calls = Calls()
        running, release = trio.Event(), trio.Event()

        class Slow(Echo):
            async def exec(self, item: Any) -> Any:
                running.set()  # so the run holds its lease
                await release.wait()
                return await super().exec(item)

        first = Slow(max_concurrency=2)
        first.set_params({"calls": calls})
        path = tmp_path / "runs.db"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(first.run, {"items": [1, 2]}, store=path, run_id="shared-id"))
            await running.wait()
            second = echo(calls, max_concurrency=2)
            with pytest.raises(LeaseError, match=r"shared-id.*is being run by another process"):
                await second.run({"items": [1, 2, 3]}, store=path, run_id="shared-id")
            release.set()
        assert sorted(calls) == [1, 2]  # the refused run started nothing

    def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(self, tmp_path: Path) -> None:
        """A lease whose process is gone (pid not running) is taken even before it runs out."""
        path = tmp_path / "runs.db"
        calls = Calls()
        trioflow.run(echo(calls), {"items": [1]}, store=path, run_id="r")
        hold_lease(path, f"{os.uname().nodename}:{dead_pid()}:dead", 1e12)
        trioflow.run(echo(calls), {"items": [1, 2]}, store=path, run_id="r")
        assert calls == [1, 2]  # 1 was recorded: only 2 ran again

    def test_lease_of_another_host_is_refused_until_it_runs_out(self, tmp_path: Path) -> None:
        """A live-looking lease from another host blocks the run; once it ran out, it is taken over."""
        path = tmp_path / "runs.db"
        calls = Calls()
        trioflow.run(echo(calls), {"items": [1]}, store=path, run_id="r")
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE runs SET owner = 'elsewhere:1:x', lease_until = 1e12, status = 'running'")
        with pytest.raises(LeaseError, match="elsewhere:1:x"):
            trioflow.run(echo(calls), {"items": [1, 2]}, store=path, run_id="r")
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE runs SET lease_until = 1.0")
        trioflow.run(echo(calls), {"items": [1, 2]}, store=path, run_id="r")
        assert calls == [1, 2]

    async def test_lease_lost_mid_run_stops_the_run_with_LeaseError(self, tmp_path: Path) -> None:
        """If another process takes the run over (the lease ran out), the next commit fails and the run stops."""
        path = tmp_path / "runs.db"
        calls = Calls()
        stolen = trio.Event()

        class Stolen(Echo):
            async def exec(self, item: Any) -> Any:
                if item == 5:
                    with contextlib.closing(sqlite3.connect(path)) as db, db:
                        db.execute("UPDATE runs SET owner = 'thief:1:x'")
                    stolen.set()
                return await super().exec(item)

        node = Stolen(max_concurrency=1)
        node.set_params({"calls": calls})
        with pytest.raises(LeaseError, match="lost its lease"):
            await node.run({"items": list(range(10))}, store=path, run_id="r")
        assert stolen.is_set()
        assert rows(path, "SELECT owner FROM runs") == [("thief:1:x",)]  # the thief's lease is left alone


# -- item keys ----------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


class TestItemKey:
    def test_item_key_is_canonical_json_or_a_hash_of_it(self) -> None:
        """Short items are keyed by their JSON, keys sorted; long ones by ~ and 32 hex digits."""
        node = trioflow.BatchNode()
        assert node.item_key({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}' == node.item_key({"a": (1, "x"), "b": 1})
        assert node.item_key("été") == '"été"' and node.item_key(7) == "7" and node.item_key(True) == "true"
        long = node.item_key("x" * 100)
        assert long.startswith("~") and len(long) == 33 and long == node.item_key("x" * 100)

    @given(value=json_values)
    def test_item_key_is_stable_through_a_JSON_round_trip(self, value: Any) -> None:
        """A JSON value and its round trip (another process's copy) have one key; the fast paths agree with json."""
        key = _durable.canonical_key(value)
        assert key == _durable.canonical_key(json.loads(json.dumps(value)))
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert key == (text if len(text) <= _durable.KEY_TEXT_MAX else key)

    def test_item_key_of_an_item_that_is_not_JSON_is_a_clear_error_and_keeps_what_was_recorded(
        self, tmp_path: Path
    ) -> None:
        """A set among the items: TypeError naming the node, the item and item_key; the items before stay recorded."""
        path = tmp_path / "runs.db"
        calls = Calls()
        node = echo(calls, max_concurrency=1)
        with pytest.raises(trioflow.BatchError) as caught:
            trioflow.run(node, {"items": [1, 2, {3}]}, store=path, run_id="r")
        (error,) = caught.value.exceptions
        assert isinstance(error, TypeError)
        assert "Echo: item {3}" in str(error) and "not JSON" in str(error) and "Echo.item_key(item)" in str(error)
        assert "raised by item 2 of Echo" in error.__notes__
        assert recorded_keys(path, "r") == {"1", "2"}

    def test_item_key_override_keys_items_and_must_return_a_str(self, tmp_path: Path) -> None:
        """An item_key that picks an id keys by it (changed text, same id: replayed); a non-str key is an error."""
        calls = Calls()

        class ById(Echo):
            def item_key(self, item: Any) -> str:
                return str(item["id"]) if item["id"] >= 0 else item["id"]  # type: ignore[no-any-return]

        node = ById()
        node.set_params({"calls": calls})
        path = tmp_path / "runs.db"
        trioflow.run(node, {"items": [{"id": 1, "t": "a"}]}, store=path, run_id="r")
        shared: dict[str, Any] = {"items": [{"id": 1, "t": "changed"}]}
        trioflow.run(node, shared, store=path, run_id="r")
        assert len(calls) == 1 and shared["results"] == [[{"id": 1, "t": "a"}, "v"]]
        node = ById()
        node.set_params({"calls": calls})
        with pytest.raises(trioflow.BatchError) as caught:
            trioflow.run(node, {"items": [{"id": -1}]}, store=path, run_id="t")
        assert "ById.item_key returned -1 for item {'id': -1}; it must return a str" in str(caught.value.exceptions[0])


# -- durable batches ---------------------------------------------------------------------------------------


class TestDurableBatch:
    def test_finished_run_run_again_replays_without_calling_exec(self, tmp_path: Path) -> None:
        """The second run calls exec for no item and post gets the same results, in input order."""
        calls = Calls()
        first: dict[str, Any] = {"items": [5, 3, 1, 4]}
        again: dict[str, Any] = {"items": [5, 3, 1, 4]}
        mock_run(lambda: echo(calls, 1, max_concurrency=2).run(first, store=tmp_path / "s.db", run_id="r"))
        assert sorted(calls) == [1, 3, 4, 5]
        mock_run(lambda: echo(calls, 1, max_concurrency=2).run(again, store=tmp_path / "s.db", run_id="r"))
        assert len(calls) == 4 and again["results"] == first["results"] == [[5, "v"], [3, "v"], [1, "v"], [4, "v"]]

    @settings(max_examples=30)
    @given(
        items=st.lists(st.integers(0, 30), max_size=25),
        cap=sts.caps,
        stop_at=st.integers(1, 25),
        kind=sts.input_kinds,
        sequential=st.booleans(),
    )
    def test_resume_after_a_cancel_runs_only_what_is_left_and_post_gets_every_result_in_order(
        self, tmp_path_factory: pytest.TempPathFactory, items: list[int], cap: int | None, stop_at: int,
        kind: str, sequential: bool,
    ) -> None:
        """Cancelled after stop_at exec calls, then run again: results equal an uninterrupted run's, in order, no
        finished item runs twice (a cancel flushes every result), and only the items in flight at the cancel rerun."""
        path = tmp_path_factory.mktemp("store") / "s.db"
        cls: type[trioflow.BatchNode] = SeqEcho if sequential else Echo
        first_calls, second_calls = Calls(), Calls()
        finished: list[int] = []

        def source() -> Any:
            if kind == "list":
                return list(items)
            if kind == "generator":
                return (i for i in items)

            async def agen() -> Any:
                for i in items:
                    yield i

            return agen()

        class Watch(trioflow.Instrument):
            def item_finished(self, node: Any, index: int, error: Any, value: Any = None) -> None:
                if error is None:
                    finished.append(items[index])

        async def interrupted() -> None:
            with trio.CancelScope() as stop:
                node = cls(**({} if sequential else {"max_concurrency": cap}))
                node.set_params({"calls": first_calls, "stop_at": stop_at, "stop": stop, "unit": 1})
                with trioflow.instrumented(Watch()):
                    await node.run({"items": source()}, store=path, run_id="r")

        async def resumed() -> dict[str, Any]:
            node = cls(**({} if sequential else {"max_concurrency": cap}))
            node.set_params({"calls": second_calls, "unit": 1})
            shared = {"items": source()}
            await node.run(shared, store=path, run_id="r")
            return shared

        mock_run(interrupted)
        shared = mock_run(resumed)
        assert shared["results"] == [[i, "v"] for i in items]
        assert not set(second_calls) & set(finished)  # nothing finished ran again
        assert set(first_calls) | set(second_calls) == set(items)
        in_flight = set(first_calls) - set(finished)
        assert set(second_calls) == set(items) - set(finished) and in_flight <= set(second_calls)

    def test_duplicate_items_are_computed_once_and_each_gets_its_own_copy(self, tmp_path: Path) -> None:
        """[1, 2, 1, 1, 3] calls exec for 1, 2, 3 once each; the results are equal, but not one shared object."""
        calls = Calls()
        shared: dict[str, Any] = {"items": [1, 2, 1, 1, 3]}
        mock_run(lambda: echo(calls, max_concurrency=3).run(shared, store=tmp_path / "s.db", run_id="r"))
        assert sorted(calls) == [1, 2, 3]
        assert shared["results"] == [[1, "v"], [2, "v"], [1, "v"], [1, "v"], [3, "v"]]
        assert shared["results"][0] is not shared["results"][2]

    def test_duplicate_of_a_finished_item_reads_its_result_back_from_the_store(self, tmp_path: Path) -> None:
        """One after another (BatchNode), a repeated item finds its twin finished: exec runs once, the
        duplicate's result is read back from the store (the batch keeps keys, not results)."""
        calls = Calls()
        node = SeqEcho()
        node.set_params({"calls": calls, "unit": 0})
        shared: dict[str, Any] = {"items": [7, 8, 7]}
        mock_run(lambda: node.run(shared, store=tmp_path / "s.db", run_id="r"))
        assert calls == [7, 8] and shared["results"] == [[7, "v"], [8, "v"], [7, "v"]]
        assert shared["results"][0] is not shared["results"][2]

    def test_duplicate_of_an_item_that_fails_runs_for_itself(self, tmp_path: Path) -> None:
        """When the first of two equal items fails (collected), the duplicate waiting on it tries on its own."""
        calls = Calls()

        class FirstFails(Echo):
            async def exec(self, item: Any) -> Any:
                result = await super().exec(item)
                if len(self.params["calls"]) == 1:
                    raise ValueError("the first call fails")
                return result

        node = FirstFails(max_concurrency=2, on_error="collect")
        node.set_params({"calls": calls})
        shared: dict[str, Any] = {"items": [2, 2]}
        mock_run(lambda: node.run(shared, store=tmp_path / "s.db", run_id="r"))
        assert calls == [2, 2]
        assert isinstance(shared["results"][0], ValueError) and shared["results"][1] == [2, "v"]

    def test_changed_items_and_a_bumped_version_run_again_unchanged_ones_do_not(self, tmp_path: Path) -> None:
        """[1, 2, 3] then [1, 2, 4] runs only 4; version "2" runs all three again; prune drops the stale results."""
        path = tmp_path / "s.db"
        calls = Calls()
        trioflow.run(echo(calls), {"items": [1, 2, 3]}, store=path, run_id="r")
        trioflow.run(echo(calls), {"items": [1, 2, 4]}, store=path, run_id="r")
        assert sorted(calls) == [1, 2, 3, 4] and calls[-1] == 4
        trioflow.run(echo(calls, version="2"), {"items": [1, 2, 4]}, store=path, run_id="r")
        assert sorted(calls[4:]) == [1, 2, 4]
        trioflow.run(echo(calls, version="2"), {"items": [1, 2, 4]}, store=path, run_id="r")
        assert len(calls) == 7
        assert SQLiteStore(path).prune()["results"] == 4  # 1, 2, 3, 4 of version "" (3 was stale anyway)
        assert rows(path, "SELECT version, key FROM results JOIN nodes USING (node_id) ORDER BY key") == [
            ("2", "1"), ("2", "2"), ("2", "4")
        ]

    def test_durable_False_opts_a_node_out(self, tmp_path: Path) -> None:
        """A node with durable=False runs every item every time and records nothing."""
        calls = Calls()
        for _ in range(2):
            trioflow.run(echo(calls, durable=False), {"items": [1, 2]}, store=tmp_path / "s.db", run_id="r")
        assert sorted(calls) == [1, 1, 2, 2]
        assert rows(tmp_path / "s.db", "SELECT COUNT(*) FROM results") == [(0,)]

    def test_unpicklable_result_is_a_clear_error_and_keeps_what_was_recorded(self, tmp_path: Path) -> None:
        """A lock returned by exec: TypeError naming node and item; the results before it stay recorded."""
        path = tmp_path / "s.db"

        class Locks(Echo):
            async def exec(self, item: Any) -> Any:
                return threading.Lock() if item == 3 else await super().exec(item)

        node = Locks(max_concurrency=1)
        node.set_params({"calls": Calls()})
        with pytest.raises(trioflow.BatchError) as caught:
            trioflow.run(node, {"items": [1, 2, 3, 4]}, store=path, run_id="r")
        (error,) = caught.value.exceptions
        assert isinstance(error, TypeError) and "Locks: the result of item 3" in str(error)
        assert "cannot be pickled" in str(error) and "durable=False" in str(error)
        assert "raised by item 2 of Locks" in error.__notes__
        assert recorded_keys(path, "r") == {"1", "2"}

    def test_failure_after_retries_then_resume_runs_only_the_failed_and_unfinished_items(
        self, tmp_path: Path
    ) -> None:
        """Item 3 fails its 2 attempts and the batch stops; the next run runs 3 and what had not finished."""
        path = tmp_path / "s.db"
        calls = Calls()
        broken = {3}

        class Flaky(Echo):
            async def exec(self, item: Any) -> Any:
                result = await super().exec(item)
                if item in broken:
                    raise ConnectionError(item)
                return result

        def flaky() -> Flaky:
            node = Flaky(max_concurrency=2, max_retries=2)
            node.set_params({"calls": calls})
            return node

        items = [0, 1, 2, 3, 4, 5, 6, 7]
        with pytest.raises(trioflow.BatchError):
            mock_run(lambda: flaky().run({"items": items}, store=path, run_id="r"))
        done = recorded_keys(path, "r")
        assert recorded_keys(path, "r", status=1) == {"3"}  # the failure, for the command line
        broken.clear()
        before = len(calls)
        shared: dict[str, Any] = {"items": items}
        mock_run(lambda: flaky().run(shared, store=path, run_id="r"))
        assert sorted(calls[before:]) == sorted(i for i in items if str(i) not in done) and 3 in calls[before:]
        assert shared["results"] == [[i, "v"] for i in items]
        assert recorded_keys(path, "r", status=1) == set()  # its result replaced the failure

    def test_on_error_collect_records_failures_not_results_and_the_next_run_retries_them(
        self, tmp_path: Path
    ) -> None:
        """With collect the run finishes, failed slots hold the exceptions, the store a failure row each;
        run again, only the failed items run; an exec_fallback value is not recorded either."""
        path = tmp_path / "s.db"
        calls = Calls()
        broken = {1, 4}

        class Collect(Echo):
            async def exec(self, item: Any) -> Any:
                result = await super().exec(item)
                if item in broken:
                    raise KeyError(item)
                return result

        def collect() -> Collect:
            node = Collect(max_concurrency=3, on_error="collect")
            node.set_params({"calls": calls})
            return node

        shared: dict[str, Any] = {"items": [0, 1, 2, 3, 4]}
        mock_run(lambda: collect().run(shared, store=path, run_id="r"))
        assert [type(r).__name__ for r in shared["results"]] == ["list", "KeyError", "list", "list", "KeyError"]
        assert recorded_keys(path, "r") == {"0", "2", "3"} and recorded_keys(path, "r", status=1) == {"1", "4"}
        (run,) = SQLiteStore(path).runs()
        assert (run.status, run.done, run.failed) == ("finished", 3, 2)
        broken.clear()
        calls.clear()
        mock_run(lambda: collect().run(shared, store=path, run_id="r"))
        assert sorted(calls) == [1, 4] and shared["results"] == [[i, "v"] for i in range(5)]

        class Fallback(Echo):
            async def exec(self, item: Any) -> Any:
                raise KeyError(item)

            def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
                return "fallback"

        for _ in range(2):
            node = Fallback()
            node.set_params({"calls": calls})
            shared = {"items": [7]}
            mock_run(lambda: node.run(shared, store=path, run_id="f"))  # noqa: B023
            assert shared["results"] == ["fallback"]
        assert recorded_keys(path, "f") == set() and recorded_keys(path, "f", status=1) == {"7"}

    def test_instrument_streams_results_and_replayed_items_bring_their_recorded_value(self, tmp_path: Path) -> None:
        """item_finished carries each value; in a replay exec is not called and item_finished (alone) brings it."""
        seen: list[tuple[str, int, Any]] = []

        class Stream(trioflow.Instrument):
            def item_started(self, node: Any, index: int) -> None:
                seen.append(("started", index, None))

            def item_finished(self, node: Any, index: int, error: Any, value: Any = None) -> None:
                seen.append(("finished", index, value))

        calls = Calls()
        for _ in range(2):
            with trioflow.instrumented(Stream()):
                mock_run(lambda: echo(calls, max_concurrency=2).run({"items": [4, 5]}, store=tmp_path / "s.db",
                                                                    run_id="r"))
        first, second = seen[:4], seen[4:]
        assert sorted(first) == [("finished", 0, [4, "v"]), ("finished", 1, [5, "v"]), ("started", 0, None),
                                 ("started", 1, None)]
        assert second == [("finished", 0, [4, "v"]), ("finished", 1, [5, "v"])] and len(calls) == 2

    async def test_backlog_of_uncommitted_results_stays_bounded_when_the_store_is_slow(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While the store's commit hangs, new items wait once MAX_BACKLOG records are uncommitted;
        once it goes on, so does the batch."""
        monkeypatch.setattr(_durable, "MAX_BACKLOG", 8)
        gate = threading.Event()

        class Hanging:
            """A connection whose commits wait for the gate."""

            def __init__(self, conn: Any) -> None:
                self.conn = conn

            def __getattr__(self, name: str) -> Any:
                return getattr(self.conn, name)

            def put_many(self, *args: Any) -> None:
                gate.wait(30)
                self.conn.put_many(*args)

        class HangingStore(SQLiteStore):
            def open(self) -> Any:
                return Hanging(super().open())

        store = HangingStore(tmp_path / "s.db")

        stuck = trio.Event()
        real_wait = _durable.Journal.wait_for_room

        async def wait_for_room(self: Any) -> None:
            stuck.set()
            await real_wait(self)

        monkeypatch.setattr(_durable.Journal, "wait_for_room", wait_for_room)
        calls = Calls()
        shared: dict[str, Any] = {"items": list(range(100))}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(echo(calls, max_concurrency=4).run, shared, store=store, run_id="r"))
            await stuck.wait()
            started = len(calls)
            gate.set()
        assert 8 - 1 <= started <= 8 + 4  # the backlog (a batch record among it), plus the items then in flight
        assert shared["results"] == [[i, "v"] for i in range(100)]


# -- durable flows ------------------------------------------------------------------------------------------


class Step(trioflow.Node):
    """Appends its name to shared["trail"], sets shared[name] = exec's value; logs its calls
    (``("prep", name)``, ``("exec", "name@n")`` and, once its exec returns, ``("done", "name@n")``)."""

    def prep(self, shared: dict[str, Any]) -> Any:
        self.params["calls"].append(("prep", self.params.get("name", type(self).__name__)))
        return [self.params.get("name", type(self).__name__), len(shared["trail"])]

    async def exec(self, prep_res: Any) -> Any:
        call = f"{prep_res[0]}@{prep_res[1]}"
        self.params["calls"].append(("exec", call))
        if prep_res[0] == self.params.get("stop_in"):
            self.params["stop"].cancel()
        await trio.sleep(1)
        self.params["calls"].append(("done", call))
        return call

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        shared["trail"].append(exec_res)
        shared[prep_res[0]] = exec_res
        return self.params.get("action")


class A(Step): ...


class B(Step): ...


class C(Step): ...


class Loop(Step):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        super().post(shared, prep_res, exec_res)
        shared["laps"] = shared.get("laps", 0) + 1
        return "again" if shared["laps"] < 3 else "out"


def pipeline() -> trioflow.Flow:
    """A -> Echo batch -> Loop (3 laps, the loop edge through B) -> nested Flow(C) -> end."""
    a, batch, loop, b = A(), Echo(max_concurrency=2), Loop(), B()
    a >> batch >> loop
    loop - "again" >> b >> loop
    loop - "out" >> trioflow.Flow(start=C())
    return trioflow.Flow(start=a)


def run_pipeline(
    path: Path, calls: list[Any], stop_in: str | None = None, stop_at: int | None = None, **extra: Any
) -> dict[str, Any]:
    shared: dict[str, Any] = {"trail": [], "items": [1, 2, 3], **extra}

    async def main() -> None:
        with trio.CancelScope() as stop:
            flow = pipeline()
            flow.set_params({"calls": calls, "stop_in": stop_in, "stop_at": stop_at, "stop": stop})
            await flow.run(shared, store=path, run_id="p")

    mock_run(main)
    return shared


class TestDurableFlow:
    @pytest.mark.parametrize("stop_in", ["A", "Echo", "Loop", "B", "C"])
    def test_flow_interrupted_in_a_step_resumes_at_it_and_shared_equals_an_uninterrupted_run(
        self, tmp_path: Path, stop_in: str
    ) -> None:
        """Cancelled in step X: the next run skips the finished steps (no prep, no exec), restores shared,
        reruns X and goes on; shared ends as an uninterrupted run's, with every lap of the loop."""
        reference = run_pipeline(tmp_path / "ref.db", [])
        calls: list[Any] = []
        run_pipeline(tmp_path / "s.db", calls, stop_in=stop_in, stop_at=4 if stop_in == "Echo" else None)
        before = list(calls)
        resumed = run_pipeline(tmp_path / "s.db", calls)
        assert resumed == reference
        assert resumed["trail"] == ["A@0", "Loop@1", "B@2", "Loop@3", "B@4", "Loop@5", "C@6"]
        again = calls[len(before) :]
        steps_before = [c for c in before if isinstance(c, tuple) and c[0] == "prep"]
        finished = len(steps_before) - (stop_in != "Echo")  # the step it stopped in did not finish
        assert len([c for c in again if isinstance(c, tuple) and c[0] == "prep"]) == 7 - finished
        finished_execs = {c[1] for c in before if isinstance(c, tuple) and c[0] == "done"}
        assert not finished_execs & {c[1] for c in again if isinstance(c, tuple)}

    def test_flow_finished_run_again_runs_every_step_but_calls_no_exec(self, tmp_path: Path) -> None:
        """A finished run starts a new generation: prep and post of every step run, exec of none."""
        calls: list[Any] = []
        first = run_pipeline(tmp_path / "s.db", calls)
        calls.clear()
        again = run_pipeline(tmp_path / "s.db", calls)
        assert again == first and [c[0] for c in calls] == ["prep"] * 7  # and no ("exec", ...)
        (run,) = SQLiteStore(tmp_path / "s.db").runs()
        assert (run.gen, run.status) == (2, "finished")

    def test_flow_records_what_each_step_changed_not_the_whole_state(self, tmp_path: Path) -> None:
        """A step that appends to a list records the appended items; one that sets a key, that key."""
        run_pipeline(tmp_path / "s.db", [], big=list(range(10_000)))
        steps = SQLiteStore(tmp_path / "s.db").steps("p")
        assert [s.keys for s in steps[:3]] == ["trail[+1], A", "results", "trail[+1], Loop, laps"]
        sizes = [len(blob) for (blob,) in rows(tmp_path / "s.db", "SELECT changes FROM steps")]
        assert max(sizes) < 500  # the 10,000-item input is never stored

    def test_flow_with_an_unpicklable_value_in_shared_is_a_clear_error_an_unpicklable_input_is_fine(
        self, tmp_path: Path
    ) -> None:
        """A lock given in shared is an input (not recorded); a lock a step puts there is a TypeError naming it."""
        lock = threading.Lock()
        shared = run_pipeline(tmp_path / "s.db", [], client=lock)
        assert shared["client"] is lock

        class PutsLock(A):
            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
                shared["lock"] = threading.Lock()

        flow = trioflow.Flow(start=PutsLock())
        flow.set_params({"calls": []})
        with pytest.raises(TypeError, match=r"Flow/PutsLock_1: after this step shared\['lock'\] is <unlocked"):
            mock_run(lambda: flow.run({"trail": []}, store=tmp_path / "s.db", run_id="lock"))

    def test_flow_with_durable_False_walks_again_but_its_batches_replay(self, tmp_path: Path) -> None:
        """A flow with durable=False records no step (run again, each step's prep runs), yet its batch's
        items and plain nodes' exec results are recorded: no exec runs twice."""
        calls: list[Any] = []
        for _ in range(2):
            flow = pipeline()
            flow.durable = False
            flow.set_params({"calls": calls})
            mock_run(lambda: flow.run({"trail": [], "items": [1, 2, 3]}, store=tmp_path / "s.db", run_id="p"))  # noqa: B023
        assert [c for c in calls if isinstance(c, tuple) and c[0] == "prep"] == [
            ("prep", name) for name in ["A", "Loop", "B", "Loop", "B", "Loop", "C"] * 2
        ]
        assert sorted(c for c in calls if isinstance(c, int)) == [1, 2, 3]  # the batch's items ran once
        assert len([c for c in calls if isinstance(c, tuple) and c[0] == "exec"]) == 7
        assert SQLiteStore(tmp_path / "s.db").steps("p") == []

    def test_flow_needs_a_dict_for_shared(self, tmp_path: Path) -> None:
        """A durable flow with a list for shared is a TypeError before anything runs."""
        with pytest.raises(TypeError, match="shared must be a dict, not list"):
            trioflow.run(pipeline(), [], store=tmp_path / "s.db", run_id="p")

    @pytest.mark.parametrize("parallel", [False, True])
    def test_batch_flow_sub_runs_are_keyed_by_param_set_and_resume_where_they_stopped(
        self, tmp_path: Path, parallel: bool
    ) -> None:
        """Sub-runs are recorded under their param set's key (a repeated set runs once); cancelled mid-way,
        the next run skips finished sub-runs, finishes the others, and shared equals an uninterrupted run's."""
        kind = trioflow.ParallelBatchFlow if parallel else trioflow.BatchFlow

        class Grid(kind):  # type: ignore[valid-type, misc]
            def prep(self, shared: dict[str, Any]) -> Any:
                return [{"name": f"g{i % 5}"} for i in range(7)]  # g0 and g1 twice

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["actions"] = exec_res

        class Cell(Step):
            """A step of one grid cell: its result goes to shared["cells"][name-class]."""

            def prep(self, shared: dict[str, Any]) -> Any:
                name = f"{self.params['name']}-{type(self).__name__}"
                self.params["calls"].append(("prep", name))
                return [name, 0]

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
                shared.setdefault("cells", {})[prep_res[0]] = exec_res
                return None

        class GA(Cell): ...

        class GB(Cell): ...

        def run(path: Path, calls: list[Any], stop_in: str | None = None) -> dict[str, Any]:
            shared: dict[str, Any] = {"trail": []}

            async def main() -> None:
                with trio.CancelScope() as stop:
                    first = GA()
                    first >> GB()
                    flow = trioflow.Flow(start=Grid(start=first, **({"max_concurrency": 3} if parallel else {})))
                    flow.set_params({"calls": calls, "stop": stop, "stop_in": stop_in})
                    await flow.run(shared, store=path, run_id="g")

            mock_run(main)
            return shared

        ref_calls: list[Any] = []
        reference = run(tmp_path / "ref.db", ref_calls)
        assert sorted(call for kind, call in ref_calls if kind == "exec") == sorted(
            f"g{i}-{c}@0" for i in range(5) for c in ("GA", "GB")
        )  # 5 distinct param sets x 2 steps: the repeated sets ran once
        calls: list[Any] = []
        run(tmp_path / "s.db", calls, stop_in="g3-GB")
        finished = {call for kind, call in calls if kind == "done"}
        calls.clear()
        resumed = run(tmp_path / "s.db", calls)
        again = {call for kind, call in calls if kind == "exec"}
        assert resumed == reference and resumed["actions"] == [None] * 7
        assert "g3-GB@0" in again and not again & finished  # no finished step's exec ran twice
        assert ("prep", "g3-GA") not in calls  # g3's first step was replayed, not run again
        places = {node.place for node in SQLiteStore(tmp_path / "s.db").nodes("g")}
        assert 'Flow/Grid_1[{"name":"g3"}]/GB_1' in places

    def test_run_started_from_inside_a_node_is_not_part_of_the_durable_run(self, tmp_path: Path) -> None:
        """A flow that an exec runs itself has no place in the graph: it runs, unrecorded, each time."""
        calls = Calls()

        class Outer(trioflow.Node):
            async def exec(self, prep_res: Any) -> Any:
                inner: dict[str, Any] = {"items": [1, 2]}
                await echo(calls).run(inner)
                return inner["results"]

            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["inner"] = exec_res

        shared: dict[str, Any] = {}
        trioflow.run(trioflow.Flow(start=Outer()), shared, store=tmp_path / "s.db", run_id="o")
        assert shared["inner"] == [[1, "v"], [2, "v"]] and sorted(calls) == [1, 2]
        assert {n.place for n in SQLiteStore(tmp_path / "s.db").nodes("o")} == {"Flow/Outer_1"}


class TestRunAPI:
    def test_run_with_a_store_object_and_the_default_run_id(self, tmp_path: Path) -> None:
        """store= takes a SQLiteStore; without run_id the run is named after the node's class."""
        store = SQLiteStore(tmp_path / "s.db")
        trioflow.run(echo(Calls()), {"items": [1]}, store=store)
        assert [r.run_id for r in store.runs()] == ["Echo"]

    def test_run_refuses_a_run_id_without_a_store_and_a_store_that_is_not_one(self, tmp_path: Path) -> None:
        """run_id alone is a ValueError, store=42 a TypeError, an empty run_id a TypeError: before anything runs."""
        with pytest.raises(ValueError, match="needs a store too"):
            trioflow.run(echo(Calls()), {"items": [1]}, run_id="r")
        with pytest.raises(TypeError, match="store must be a path"):
            trioflow.run(echo(Calls()), {"items": [1]}, store=42)
        with pytest.raises(TypeError, match="run_id must be a non-empty str"):
            trioflow.run(echo(Calls()), {"items": [1]}, store=tmp_path / "s.db", run_id="")

    def test_store_file_that_is_not_a_database_is_a_clear_error_left_untouched(self, tmp_path: Path) -> None:
        """A text file as the store: StoreError naming the file and saying it is not a database."""
        path = tmp_path / "notes.txt"
        path.write_text("not a database, just notes\n" * 100)
        with pytest.raises(StoreError, match=rf"store {path}.*not a database"):
            trioflow.run(echo(Calls()), {"items": [1]}, store=path, run_id="r")
        assert path.read_text() == "not a database, just notes\n" * 100

    def test_store_in_a_read_only_directory_is_a_clear_error_and_loses_nothing(self, tmp_path: Path) -> None:
        """A store whose directory cannot be written (SQLite needs its -wal and -shm files there): StoreError
        naming the file and saying so; once writable again, the results recorded before are all there."""
        folder = tmp_path / "ro"
        folder.mkdir()
        path = folder / "runs.db"
        trioflow.run(echo(Calls()), {"items": [1, 2]}, store=path, run_id="r")
        program = (
            "import trioflow\n"
            "from tests.test_store import Calls, echo\n"
            f"trioflow.run(echo(Calls()), {{'items': [1, 2, 3]}}, store={str(path)!r}, run_id='r')\n"
        )
        os.chmod(folder, 0o555)
        try:
            done = subprocess.run(
                [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60,
                preexec_fn=without_root_overrides, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        finally:
            os.chmod(folder, 0o755)
        assert done.returncode != 0
        assert f"trioflow.store.StoreError: store {path}" in done.stderr and "must be writable" in done.stderr
        assert recorded_keys(path, "r") == {"1", "2"}

    def test_store_locked_by_another_process_is_a_clear_error_and_loses_nothing(self, tmp_path: Path) -> None:
        """While another connection holds the write lock past busy_timeout: StoreError saying so, naming the file;
        the results recorded before survive, and the run completes once the lock is gone."""
        path = tmp_path / "s.db"
        calls = Calls()
        trioflow.run(echo(calls), {"items": [1, 2]}, store=path, run_id="r")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError, match=rf"store {path}.*locked.*busy_timeout"):
                trioflow.run(echo(calls), {"items": [1, 2, 3]}, store=SQLiteStore(path, busy_timeout=0.05), run_id="r")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert sorted(calls) == [1, 2] and recorded_keys(path, "r") == {"1", "2"}
        trioflow.run(echo(calls), {"items": [1, 2, 3]}, store=path, run_id="r")
        assert sorted(calls) == [1, 2, 3]

    async def test_store_locked_mid_run_stops_the_run_with_StoreError(self, tmp_path: Path) -> None:
        """A write lock taken while the run goes: its next commit fails, the run stops with a StoreError
        (not a hang, not a silent loss), and the commits before stay."""
        path = tmp_path / "s.db"
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

        class Locker(Echo):
            async def exec(self, item: Any) -> Any:
                if item == 10:
                    # until the writer thread committed the first results (no event to wait on: another thread)
                    with trio.fail_after(30):  # bounded: a writer that never commits fails the test, not hangs it
                        while not rows(path, "SELECT COUNT(*) FROM results")[0][0]:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                    blocker.execute("BEGIN EXCLUSIVE")
                return await super().exec(item)

        node = Locker(max_concurrency=1)
        node.set_params({"calls": Calls()})
        try:
            with pytest.raises(StoreError, match="locked"):
                await node.run({"items": list(range(20))}, store=SQLiteStore(path, busy_timeout=0.05), run_id="r")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert recorded_keys(path, "r") and recorded_keys(path, "r") <= {str(i) for i in range(10)}


# -- the command line -------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """An output that says it is a terminal (what the command line draws rich tables on)."""

    def isatty(self) -> bool:
        return True


class TestStoreCommandLine:
    def test_main_lists_shows_forgets_and_prunes_in_plain_text(self, tmp_path: Path) -> None:
        """Off a terminal: aligned plain text with the run's status, batches, done/failed counts and steps."""
        path = tmp_path / "s.db"
        run_pipeline(path, [])
        out = io.StringIO()
        assert main([str(path)], out=out) == 0
        text = out.getvalue()
        assert text.startswith(f"1 run in {path}\n") and "run  status    gen  batches  done  failed  steps" in text
        assert "p    finished  1    8        10    0       9" in text  # 8 batches: Echo and 7 plain steps' exec
        out = io.StringIO()
        assert main([str(path), "show", "p"], out=out) == 0
        shown = out.getvalue()
        assert "run 'p': finished, generation 1, 10 done, 0 failed" in shown
        assert "Flow/Echo_1" in shown and "Flow/Loop_1@2" in shown and "9 steps recorded" in shown
        out = io.StringIO()
        assert main([str(path), "prune"], out=out) == 0 and out.getvalue() == "pruned 0 results, 0 batches, 0 steps\n"
        assert main([str(path), "forget", "p"], out=io.StringIO()) == 0
        assert main([str(path), "forget", "p"], out=io.StringIO()) == 1

    def test_main_on_a_terminal_draws_a_rich_table(self, tmp_path: Path) -> None:
        """python -m trioflow.store with a pty as its output draws a table with box characters."""
        path = tmp_path / "s.db"
        trioflow.run(echo(Calls()), {"items": [1]}, store=path, run_id="r")
        leader, follower = pty.openpty()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "trioflow.store", str(path), "list"], stdout=follower, stderr=subprocess.PIPE,
                cwd=ROOT, timeout=60, env={**os.environ, "COLUMNS": "120"},
            )
            os.close(follower)
            output = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            os.close(leader)
        assert done.returncode == 0, done.stderr
        text = output.decode()
        assert "┃" in text or "│" in text
        assert "finished" in text and "Echo" not in text.split("\n")[0]

    def test_main_names_the_file_when_it_is_not_a_store(self, tmp_path: Path) -> None:
        """A file that is not a store: exit code 1 and an error naming it; a missing file likewise."""
        bad = tmp_path / "bad.db"
        bad.write_bytes(b"x" * 4096)
        done = subprocess.run(
            [sys.executable, "-m", "trioflow.store", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        assert done.returncode == 1 and f"error: store {bad}" in done.stderr and "not a database" in done.stderr
        for command in ([], ["prune"], ["forget", "r"]):
            assert main([str(tmp_path / "missing.db"), *command], out=io.StringIO()) == 1
        assert not (tmp_path / "missing.db").exists()  # looking into a store never creates one


    def test_main_lists_an_empty_store_and_a_store_whose_last_run_was_forgotten(self, tmp_path: Path) -> None:
        """No runs: a sentence saying so (no table), exit code 0, the same on a terminal and off it."""
        path = tmp_path / "s.db"
        SQLiteStore(path).open().close()
        for out in (io.StringIO(), Terminal()):
            assert main([str(path)], out=out) == 0
            assert out.getvalue() == f"no runs in {path}\n"
        trioflow.run(echo(Calls()), {"items": [1]}, store=path, run_id="r")
        assert main([str(path), "forget", "r"], out=io.StringIO()) == 0
        for out in (io.StringIO(), Terminal()):
            assert main([str(path), "list"], out=out) == 0
            assert out.getvalue() == f"no runs in {path}\n"

    def test_main_shows_a_run_interrupted_in_its_first_step_with_no_steps_recorded(self, tmp_path: Path) -> None:
        """show of a run cancelled in its first step: the run's line, its batches, and "no steps recorded"."""
        path = tmp_path / "s.db"
        run_pipeline(path, [], stop_in="A")
        assert rows(path, "SELECT COUNT(*) FROM steps") == [(0,)]
        out = io.StringIO()
        assert main([str(path), "show", "p"], out=out) == 0
        shown = out.getvalue()
        assert shown.startswith("run 'p': interrupted, generation 1, 0 done, 0 failed")
        assert "\nFlow/A_1 " in shown and shown.endswith("\nno steps recorded\n")  # the interrupted step's batch
        terminal = Terminal()
        assert main([str(path), "show", "p"], out=terminal) == 0
        assert "│" in terminal.getvalue() and terminal.getvalue().endswith("\nno steps recorded\n")

    def test_main_shows_a_run_without_batches_or_steps(self, tmp_path: Path) -> None:
        """A run killed before it recorded anything: "no batches recorded" and "no steps recorded"."""
        path = tmp_path / "s.db"
        with contextlib.closing(SQLiteStore(path).open()) as conn:
            conn.lease("r", "elsewhere:1:x", 60)
            conn.release("r", "elsewhere:1:x", "interrupted")
        for out in (io.StringIO(), Terminal()):
            assert main([str(path), "show", "r"], out=out) == 0
            lines = out.getvalue().splitlines()
            assert lines[0].startswith("run 'r': interrupted, generation 1, 0 done, 0 failed")
            assert lines[1:] == ["no batches recorded", "no steps recorded"]

    def test_main_says_a_run_whose_process_on_this_host_is_gone_was_interrupted(self, tmp_path: Path) -> None:
        """A lease held by a dead pid of this host (kill -9): list and show say interrupted and name the pid."""
        path = tmp_path / "s.db"
        trioflow.run(echo(Calls()), {"items": [1]}, store=path, run_id="r")
        pid = dead_pid()
        hold_lease(path, f"{os.uname().nodename}:{pid}:dead", 1e12)
        out = io.StringIO()
        assert main([str(path)], out=out) == 0
        assert f"r    interrupted (process {pid} is gone)  1" in out.getvalue()
        out = io.StringIO()
        assert main([str(path), "show", "r"], out=out) == 0
        assert out.getvalue().startswith(f"run 'r': interrupted (process {pid} is gone), generation 1, 1 done")

    def test_main_says_a_run_of_a_live_process_on_this_host_is_running(self, tmp_path: Path) -> None:
        """A lease held by a live pid of this host (this test's own): running, with the pid; stalled once the
        lease ran out (the process no longer renews it, so another run may take it over)."""
        path = tmp_path / "s.db"
        trioflow.run(echo(Calls()), {"items": [1]}, store=path, run_id="r")
        hold_lease(path, f"{os.uname().nodename}:{os.getpid()}:live", 1e12)
        out = io.StringIO()
        assert main([str(path)], out=out) == 0
        assert f"r    running (pid {os.getpid()})  1" in out.getvalue()
        out = io.StringIO()
        assert main([str(path), "show", "r"], out=out) == 0
        assert out.getvalue().startswith(f"run 'r': running (pid {os.getpid()}), generation 1")
        hold_lease(path, f"{os.uname().nodename}:{os.getpid()}:live", 1.0)
        out = io.StringIO()
        assert main([str(path)], out=out) == 0
        assert f"r    stalled or gone (its lease ran out; pid {os.getpid()} runs, maybe another process by now)  1" in (
            out.getvalue()
        )

    def test_main_says_a_run_of_another_host_may_be_running_until_its_lease_runs_out(self, tmp_path: Path) -> None:
        """Another host's process cannot be looked at: "may be running" while its lease lasts, then interrupted."""
        path = tmp_path / "s.db"
        trioflow.run(echo(Calls()), {"items": [1]}, store=path, run_id="r")
        hold_lease(path, "elsewhere:1:x", time.time() + 3600)
        out = io.StringIO()
        assert main([str(path)], out=out) == 0
        assert re.search(r"r    may be running \(elsewhere:1:x on another host; its lease runs 3[56]\d\d s more\)",
                         out.getvalue())
        hold_lease(path, "elsewhere:1:x", 1.0)
        out = io.StringIO()
        assert main([str(path)], out=out) == 0
        assert "r    interrupted (the lease of elsewhere:1:x ran out)  1" in out.getvalue()


class TestReadmeGuide:
    def test_survive_a_crash_shell_session_runs_as_shown(self, tmp_path: Path) -> None:
        """README's "Survive a crash" console block, run as shown on its summarize.py: killed, resumed (making
        fewer calls than a full run), replayed (no call), and the command line prints what the block shows."""
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        section = text[text.index("### Survive a crash") :]
        section = section[: section.index("\n## ")]
        program = re.search(r"```python\n(.*?)```", section, re.DOTALL)
        session = re.search(r"```console\n(.*?)```", section, re.DOTALL)
        assert program is not None and session is not None
        (tmp_path / "summarize.py").write_text(program.group(1))
        steps: list[tuple[str, list[str]]] = []
        for line in session.group(1).splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        when = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
        calls = re.compile(r"(\d+) summaries, (\d+) calls made this time")
        for number, (command, shown) in enumerate(steps):
            done = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, (command, done.stderr)
            got = [when.sub("<time>", line) for line in done.stdout.splitlines()]
            want = [when.sub("<time>", line) for line in shown]
            if number == 1:  # the resumed run: how many calls were left depends on when the kill came
                (line,) = got
                match = calls.fullmatch(line)
                assert match is not None and match.group(1) == "2000" and 0 < int(match.group(2)) <= 2001
            else:
                assert got == want, command


def test_pickled_records_are_plain_data() -> None:
    """A step's changes are pickles of plain tuples and dicts (any process can read them back)."""
    state = _durable.SharedState()
    shared: dict[str, Any] = {"d": {"a": 1}, "l": [1]}
    state.baseline(shared)
    shared["d"]["b"] = 2
    shared["l"].append(2)
    shared["n"] = 3
    changes, removed = state.diff(shared)
    assert pickle.loads(pickle.dumps(changes)) == changes
    assert changes == {"d": ("update", {"b": pickle.dumps(2, 5)}, []), "l": ("extend", [pickle.dumps(2, 5)]),
                       "n": ("set", pickle.dumps(3, 5))}
    restored: dict[str, Any] = {"d": {"a": 1}, "l": [1]}
    _durable.SharedState.apply(restored, changes, removed)
    assert restored == shared
