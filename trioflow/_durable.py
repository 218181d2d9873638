"""The engine side of durable runs: the "done before?" and "record" stages, and flow steps.

::

    pull item ─► done before? (Recorder.lookup) ─► admit ─► run exec ─► record (Recorder.record)

A run given a store (``await flow.run(shared, store=..., run_id=...)``) opens a
:class:`Session`, held in a context variable so that every nested flow, node
and worker task sees it, as instruments are seen.  The session owns a
:class:`Journal`: the one writer thread that owns the store's connection and
commits what the run appends, every :data:`FLUSH_SECONDS` or
:data:`FLUSH_ROWS` records, in one transaction each.  Appending is a
``deque.append`` (no await, no lock), so recording costs an item a pickle and
an append.

What is recorded, and when:

- a batch item's result, the moment ``exec`` returns it (:class:`Recorder`),
  under the batch's place in the graph, its ``Node.version`` and the item's
  key (``item_key(item)``); a batch flow's run of its sub-flow likewise (the
  run's last action), under its param set's key;
- a plain node's ``exec`` result, as a batch of one item keyed by its ``prep`` result;
- an item that failed for good: a failure row (the error's text), never a
  result, so a resumed run tries it again; with ``on_error="collect"`` too, and
  for an item whose ``exec_fallback`` stood in;
- each finished flow step (:class:`FlowWalk`): the flow's place, the step's
  number in the walk, the node's place, the action, and the top-level keys of
  ``shared`` that changed since the last recorded step (:class:`SharedState`:
  pickled one by one; for a dict or list changed in place, its new entries).

What a crash costs: the items in flight, and the results appended since the
last commit began (at most :data:`MAX_BACKLOG`; a new item waits when that many
are uncommitted).  A run that returns, raises or is cancelled (Ctrl-C) commits
everything first (the close is shielded).

A resumed run (the last generation of ``run_id`` did not finish) applies the
recorded steps' changes to ``shared``, skips each recorded step when its walk
reaches it (taking the recorded action) and continues at the successor of the
last one; a batch skips its recorded items (``exec`` is not called) and runs
the rest, and ``post`` gets every result in input order.  A finished run run
again starts its next generation: every step runs, every unchanged item is
replayed from the store.

A place is a path of segments: the top-level node's class name, then per flow
level the step's id in that flow's graph (``Summarize_1``, as
:meth:`Flow.to_mermaid` numbers it; ``Summarize_1@2`` for the second visit in
one walk) and, inside a batch flow's sub-run, ``[key]`` of its param set
(``Grid_1[{"filter":"blur"}]``, never its position alone).  A flow or node
that user code runs itself from inside a node (``await other.run(shared)``)
has no place of its own and is not part of the durable run (:func:`run_apart`).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import json
import pickle
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import outcome
import trio

from ._errors import add_note
from ._item import MISSING, Pending, is_awaitable

if TYPE_CHECKING:
    from ._node import Node
    from .store import Connection, Lease, Store

#: The writer commits what is queued at least this often (seconds)...
FLUSH_SECONDS = 0.05
#: ...and as soon as this many records are queued; one commit writes at most this many.
FLUSH_ROWS = 4096
#: Queued and uncommitted records at which a new item waits before it runs: memory stays bounded
#: when the disk is slower than the run, and a crash loses at most one window of results (plus
#: the items in flight).  Two windows let the run go on while a commit is under way, but measured
#: no faster (5.5 against 5.3 µs an item for 200,000 trivial items) and a kill cost twice as much.
MAX_BACKLOG = FLUSH_ROWS
#: Seconds a lease lasts unless renewed; the writer renews it every quarter of that.
LEASE_SECONDS = 60.0
#: A batch replaying recorded items yields to Trio once per this many (a power of two).
REPLAY_CHECKPOINT = 512
#: An item key is the item's canonical JSON when at most this long, else ``~`` and a hash of it.
KEY_TEXT_MAX = 64

_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar("trioflow_durable", default=None)
_place: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("trioflow_durable_place", default=())
#: False inside a flow with ``durable=False``: the flows nested in it record no steps either
#: (it walks again from its start on resume, and so do they).
_steps_recorded: contextvars.ContextVar[bool] = contextvars.ContextVar("trioflow_steps_recorded", default=True)

#: The durable run the running code is part of, or None (the fast path: one context-variable read).
current = _session.get


# -- item keys ------------------------------------------------------------------------------------------

_encode_str: Callable[[str], str] = json.encoder.encode_basestring
_to_json = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def canonical_key(item: Any) -> str:
    """The default ``item_key``: the item's canonical JSON (keys sorted, no spaces), or ``~`` and a
    128-bit BLAKE2 hash of it when longer than :data:`KEY_TEXT_MAX` characters.

    Stable across processes and Python versions.  A tuple and a list of the same
    elements have the same key (both are JSON arrays), as have ``{1: x}`` and ``{"1": x}``.

    Raises:
        TypeError: the item is not JSON (an object, a set, bytes...).
    """
    kind = type(item)
    if kind is int:
        text = int.__repr__(item)
    elif kind is str:
        text = _encode_str(item)
    else:
        text = _to_json(item)
    if len(text) <= KEY_TEXT_MAX:
        return text
    return "~" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()



def _name(node: object) -> str:
    return type(node).__name__


def place_text(place: tuple[str, ...]) -> str:
    """A place as the store shows it: ``Flow/Grid_1[{"name":"g3"}]/Blur_1``."""
    return "".join(segment if segment[:1] == "[" else "/" + segment for segment in place)[1:]


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the journal: one writer thread per run -------------------------------------------------------------


class Journal:
    """The writer thread of one durable run and the queue of records it commits.

    The thread opens the store's connection, and is the only one to use it.  It
    wakes every :data:`FLUSH_SECONDS` (or when :data:`FLUSH_ROWS` records are
    queued) and commits the queue, then runs the calls the run awaits
    (:meth:`call`: the lease, a batch's recorded results, the steps), after
    committing what was queued before them.  It renews the lease while idle.

    A store error stops the writer (what could not be written is dropped: those
    items run again on resume) and cancels the run (:attr:`scope`), which then
    raises :class:`~trioflow.store.StoreError`.
    """

    def __init__(self, store: Store, run_id: str, owner: str) -> None:
        self.store = store
        self.run_id = run_id
        self.owner = owner
        self.queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.jobs: collections.deque[tuple[str, tuple[Any, ...], Callable[[outcome.Outcome[Any]], None]]] = (
            collections.deque()
        )
        self.wake = threading.Event()
        self.kicked = False
        self.writing = 0  # records taken from the queue by a commit under way
        self.committed = 0
        self.leased = False
        self.stopping = False
        self.error: BaseException | None = None
        self.conn: Connection | None = None
        self.scope: trio.CancelScope | None = None  # the run, cancelled when the store fails
        self.room: trio.Event | None = None  # set when the backlog falls below MAX_BACKLOG
        self.token = trio.lowlevel.current_trio_token()
        self.last_commit = time.monotonic()
        self.thread = threading.Thread(target=self._main, name=f"trioflow store writer {run_id!r}", daemon=True)

    # -- the Trio side ------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def append(self, record: tuple[Any, ...]) -> None:
        """Queue ``record`` for the next commit: no await, no lock."""
        queue = self.queue
        queue.append(record)
        if len(queue) >= FLUSH_ROWS and not self.kicked:
            self.kicked = True
            self.wake.set()

    def backlogged(self) -> bool:
        return len(self.queue) + self.writing >= MAX_BACKLOG and self.error is None

    async def wait_for_room(self) -> None:
        """Wait until the backlog of uncommitted records is below :data:`MAX_BACKLOG`."""
        while self.backlogged():
            if self.room is None:
                self.room = trio.Event()
            room = self.room
            self.kicked = True
            self.wake.set()
            await room.wait()

    def _room_ready(self) -> None:
        if self.room is not None and not self.backlogged():
            self.room.set()
            self.room = None

    def _stop_run(self) -> None:
        if self.scope is not None:
            self.scope.cancel()

    async def call(self, method: str, *args: Any) -> Any:
        """``connection.method(*args)`` on the writer thread, after what is queued now is committed."""
        event = trio.Event()
        box: list[outcome.Outcome[Any]] = []
        token = self.token

        def done(result: outcome.Outcome[Any]) -> None:
            box.append(result)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        self.jobs.append((method, args, done))
        self.wake.set()
        await event.wait()
        return box[0].unwrap()

    async def close(self, status: str) -> BaseException | None:
        """Commit everything queued, give the lease back with ``status``, close the connection
        and end the thread.  Call it shielded.  Returns the store's first error, if any."""
        if self.thread.is_alive():
            await self.call("finish", status)
            self.thread.join()
        return self.error

    # -- the writer thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.conn = self.store.open()
        except Exception as exc:
            self._failed(exc)
        while not self.stopping:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            self.kicked = False
            self._commit()
            while self.jobs:
                method, args, done = self.jobs.popleft()
                self._commit()
                done(outcome.capture(self._job, method, *args))
            if self.leased and self.error is None and time.monotonic() - self.last_commit > LEASE_SECONDS / 4:
                self._put([])
            if self.room is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    self.token.run_sync_soon(self._room_ready)

    def _job(self, method: str, *args: Any) -> Any:
        if method == "finish":
            return self._finish(*args)
        if self.conn is None:
            assert self.error is not None
            raise self.error
        result = getattr(self.conn, method)(*args)
        if method == "lease":
            self.leased = True
        return result

    def _commit(self) -> None:
        queue = self.queue
        while queue and self.error is None:
            count = min(len(queue), FLUSH_ROWS)
            self.writing = count
            self._put([queue.popleft() for _ in range(count)])
            self.writing = 0
        if self.error is not None:
            queue.clear()  # cannot be written: those items run again on resume

    def _put(self, records: list[tuple[Any, ...]]) -> None:
        assert self.conn is not None
        try:
            self.conn.put_many(self.run_id, self.owner, LEASE_SECONDS, records)
        except Exception as exc:
            self._failed(exc)
        else:
            self.committed += len(records)
        self.last_commit = time.monotonic()

    def _failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self._stop_run)

    def _finish(self, status: str) -> None:
        self.stopping = True
        if self.conn is None:
            return
        try:
            self._commit()
            if self.leased:
                self.conn.release(self.run_id, self.owner, status)
        except Exception as exc:
            self._failed(exc)
        finally:
            self.conn.close()


# -- the session of one run -----------------------------------------------------------------------------

#: Values that cannot change in place: the same object is the same value.
_ATOMIC = frozenset({str, int, float, bool, bytes, type(None), complex})


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def _entry(value: Any) -> tuple[Any, bytes | None]:
    """An element of a dict or list of ``shared`` as kept: the object, and its pickle unless atomic."""
    return (value, None) if type(value) in _ATOMIC else (value, _dumps(value))


class Unpicklable(Exception):
    """A value of ``shared`` that a step changed cannot be pickled."""

    def __init__(self, key: Any, value: Any, error: Exception) -> None:
        super().__init__(key, error)
        self.key = key
        self.value = value
        self.error = error


class SharedState:
    """The last recorded state of ``shared``, to record only what a step changed.

    Per top-level key it keeps the value object and enough to tell a change
    cheaply: nothing for an atomic value (str, int...: the same object is the
    same value); for a dict or a list, each element (atomic ones by identity,
    others by their pickle), so that a step which adds one entry to a dict of
    ten thousand records that entry, not the dict; for other values, the pickle.

    A change is ``("set", pickle)``, ``("update", {subkey: pickle}, [removed
    subkeys])`` for a dict changed in place, or ``("extend", [pickles])`` for a
    list appended to in place.  A value that cannot be pickled when the run
    starts is taken as an input (a client, say): not recorded, and unchanged as
    long as it is the same object.
    """

    def __init__(self) -> None:
        self.kept: dict[Any, tuple[Any, ...]] = {}

    def _keep(self, value: Any) -> tuple[tuple[Any, ...], bytes]:
        blob = _dumps(value)
        kind = type(value)
        if kind in _ATOMIC:
            return ("atom", value), blob
        if kind is dict:
            return ("dict", value, {k: _entry(v) for k, v in value.items()}), blob
        if kind is list:
            return ("list", value, [_entry(v) for v in value]), blob
        return ("blob", value, blob), blob

    def baseline(self, shared: Mapping[Any, Any]) -> None:
        """Take ``shared`` as it is now as the recorded state."""
        self.kept.clear()
        for key, value in shared.items():
            try:
                self.kept[key] = self._keep(value)[0]
            except Exception:
                self.kept[key] = ("input", value)

    def diff(self, shared: Mapping[Any, Any]) -> tuple[dict[Any, tuple[Any, ...]], list[Any]]:
        """What changed since the last call (or the baseline), and the keys removed; now the recorded state.

        Raises:
            Unpicklable: a changed value cannot be pickled.
        """
        kept = self.kept
        changes: dict[Any, tuple[Any, ...]] = {}
        for key, value in shared.items():
            old = kept.get(key)
            try:
                if old is not None and old[1] is value:
                    if old[0] == "atom" or old[0] == "input":
                        continue
                    change = self._delta(key, old, value)
                    if change is not None:
                        changes[key] = change
                    continue
                kept[key], blob = self._keep(value)
            except Exception as exc:
                raise Unpicklable(key, value, exc) from exc
            changes[key] = ("set", blob)
        removed = [key for key in kept if key not in shared] if len(kept) > len(shared) else []
        for key in removed:
            del kept[key]
        return changes, removed

    def _delta(self, key: Any, old: tuple[Any, ...], value: Any) -> tuple[Any, ...] | None:
        """The change of a value that is the same object as before, or None."""
        kind = old[0]
        if kind == "dict":
            entries: dict[Any, tuple[Any, bytes | None]] = old[2]
            updates: dict[Any, bytes] = {}
            for k, v in value.items():
                entry = entries.get(k)
                if entry is not None and entry[0] is v:
                    if entry[1] is None:
                        continue
                    blob = _dumps(v)
                    if blob == entry[1]:
                        continue
                else:
                    blob = _dumps(v)
                updates[k] = blob
                entries[k] = (v, None if type(v) in _ATOMIC else blob)
            gone = [k for k in entries if k not in value] if len(entries) > len(value) else []
            for k in gone:
                del entries[k]
            return ("update", updates, gone) if updates or gone else None
        if kind == "list":
            items: list[tuple[Any, bytes | None]] = old[2]
            n = len(items)
            prefix = zip(items, value, strict=False)  # the first n elements
            if len(value) >= n and all(was is v and (blob is None or _dumps(v) == blob) for (was, blob), v in prefix):
                if len(value) == n:
                    return None
                tail = [_entry(v) for v in value[n:]]
                items.extend(tail)
                return ("extend", [blob if blob is not None else _dumps(v) for v, blob in tail])
            self.kept[key], blob = self._keep(value)
            return ("set", blob)
        blob = _dumps(value)
        if blob == old[2]:
            return None
        self.kept[key] = ("blob", value, blob)
        return ("set", blob)

    @staticmethod
    def apply(shared: MutableMapping[Any, Any], changes: Mapping[Any, tuple[Any, ...]], removed: list[Any]) -> None:
        """Apply a recorded step's changes to ``shared``."""
        for key, change in changes.items():
            if change[0] == "set":
                shared[key] = pickle.loads(change[1])
            elif change[0] == "update":
                target = shared[key]
                for k, blob in change[1].items():
                    target[k] = pickle.loads(blob)
                for k in change[2]:
                    target.pop(k, None)
            else:  # "extend"
                shared[key].extend(pickle.loads(blob) for blob in change[1])
        for key in removed:
            shared.pop(key, None)

    @staticmethod
    def describe(changes: Mapping[Any, tuple[Any, ...]], removed: list[Any]) -> str:
        """The changed keys, for people: ``summaries, results[+2 -1], log[+3], -draft``."""
        words = []
        for key, change in changes.items():
            if change[0] == "update":
                words.append(f"{key}[+{len(change[1])}{f' -{len(change[2])}' if change[2] else ''}]")
            elif change[0] == "extend":
                words.append(f"{key}[+{len(change[1])}]")
            else:
                words.append(str(key))
        return ", ".join(words + [f"-{key}" for key in removed])


class Session:
    """One durable run: its journal, its generation, the steps a resumed run replays, and the
    last recorded state of ``shared`` (to record only what a step changed)."""

    def __init__(self, journal: Journal, run_id: str, lease: Lease, label: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self.gen = lease.gen
        self.fresh = lease.fresh
        self.label = label  # what errors call the store (its path)
        self.replay: dict[tuple[str, int], str | None] = {}
        self.state = SharedState()
        self.known: set[int] = set()  # batches with records, when the run is not fresh
        self._graph_ids: dict[int, dict[int, str]] = {}

    def graph_ids(self, flow: Any) -> dict[int, str]:
        """``graph_ids(flow)``, computed once per wired flow."""
        from ._mermaid import graph_ids

        key = id(flow._identity)
        ids = self._graph_ids.get(key)
        if ids is None:
            ids = self._graph_ids[key] = graph_ids(flow)
        return ids

    def restore(self, shared: MutableMapping[Any, Any], steps: list[tuple[str, int, str, str | None, bytes]]) -> None:
        """Apply the recorded steps' changes to ``shared``, in order; remember their actions."""
        for flow, n, node, action, blob in steps:
            try:
                changes, removed = pickle.loads(blob)
                SharedState.apply(shared, changes, removed)
            except Exception as exc:
                raise _store_error(
                    f"store {self.label}: run {self.run_id!r}: the state recorded after step {node} cannot be "
                    f"restored ({type(exc).__name__}: {exc}); forget the run to start it over"
                ) from exc
            self.replay[(flow, n)] = action

    def baseline(self, shared: Mapping[Any, Any]) -> None:
        """Take ``shared`` as the state the next step's changes are measured from."""
        self.state.baseline(shared)

    def record_step(self, flow: str, n: int, node: str, action: str | None, shared: Any) -> None:
        """Append step ``n`` of the walk at ``flow``: the node's place, its action, what it changed."""
        if not isinstance(shared, MutableMapping):
            raise TypeError(
                f"{node}: a durable flow records the top-level keys of shared each step changes, so shared must "
                f"be a dict, not {type(shared).__name__}; run the flow with durable=False to record its batches only"
            )
        try:
            changes, removed = self.state.diff(shared)
        except Unpicklable as exc:
            error = exc.error
            raise TypeError(
                f"{node}: after this step shared[{exc.key!r}] is {_brief(exc.value)}, which cannot be pickled "
                f"({type(error).__name__}: {error}); a durable flow records the top-level keys of shared that "
                "each step changes: keep what cannot be pickled out of shared (in a node attribute, or in shared "
                "before the run starts, where it is taken as an input), or set durable=False on the flow"
            ) from error
        self.journal.append(
            (
                "step",
                self.run_id,
                self.gen,
                flow,
                n,
                node,
                action,
                SharedState.describe(changes, removed),
                _dumps((changes, removed)),
                time.time(),
            )
        )


def _store_error(message: str) -> Exception:
    from .store import StoreError

    return StoreError(message)


# -- done before? and record: one batch -----------------------------------------------------------------


class Reread(Pending):
    """A duplicate of an item its batch already computed: its result is read back from the store."""

    __slots__ = ("args", "recorder")

    def __init__(self, recorder: Recorder, key: str, index: int | None, item: Any) -> None:
        super().__init__()
        self.recorder = recorder
        self.args = (key, index, item)

    async def wait(self) -> Any:
        return await self.recorder.reread(*self.args)


class Recorder:
    """The store's side of one batch: its recorded results, and the record of new ones.

    Built once per batch (:func:`recorder_for`), after the batch's recorded
    results are loaded.  Each item's key is computed once.  A key met twice in
    one batch is computed once: the second item waits for the first (holding no
    admission) and gets its own copy of the result, as a replay would.  The batch
    keeps the key of each item it computed (not its result: a duplicate of an item
    finished earlier reads its result back from the store).

    Two ways in: :meth:`wrap` gives an ``async def`` function of the item, with
    the stages around the call, for an item that needs nothing else (the pool
    awaits it in its fast path); the :class:`~trioflow._item.ItemRunner` of an
    item with a retry policy, an executor or instruments calls :meth:`lookup`,
    :meth:`record` and :meth:`settle` around the retry core instead.
    """

    __slots__ = (
        "inflight",
        "journal",
        "key_of",
        "keys",
        "name",
        "node_id",
        "noun",
        "place",
        "place_text",
        "replays",
        "run_id",
        "seen",
        "stale",
        "stored",
        "used",
        "version",
    )

    def __init__(
        self,
        session: Session,
        node: Node,
        place: tuple[str, ...],
        node_id: int,
        stored: dict[str, bytes],
        stale: set[str],
        noun: str,
    ) -> None:
        self.journal = session.journal
        self.run_id = session.run_id
        self.name = _name(node)
        self.place = place
        self.place_text = place_text(place)
        self.version = str(node.version)
        self.node_id = node_id
        self.noun = noun
        default = getattr(type(node).item_key, "_trioflow_default", False)
        self.key_of: Callable[[Any], Any] = canonical_key if default else node.item_key
        self.stored = stored  # results recorded by earlier runs
        self.stale = stale  # recorded keys marked stale by the last full pass
        # Dicts of None, not sets: a dict of str keys and None values is not tracked by the
        # garbage collector, so its collections never walk a million keys.
        self.used: dict[str, None] = {}  # the keys of ``stored`` met in this batch
        self.seen: dict[str, None] = {}  # keys this batch computed and recorded
        self.inflight: dict[str, Pending | None] = {}  # keys being computed -> what their duplicates wait on
        self.keys: dict[int, str] = {}  # index -> key of the items the ItemRunner is computing
        self.replays = 0

    # -- the stages, by key ---------------------------------------------------------------------------

    def _what(self, index: int | None, item: Any) -> str:
        if self.noun == "prep result":
            return "its prep result"
        return f"{self.noun} {index}" if index is not None else f"{self.noun} {_brief(item)}"

    def _key(self, index: int | None, item: Any) -> str:
        try:
            key = self.key_of(item)
        except Exception as exc:
            raise TypeError(
                f"{self.name}: {self._what(index, item)} is {_brief(item)}, which is not JSON "
                f"({type(exc).__name__}: {exc}), so a durable run cannot key its result: override "
                f"{self.name}.item_key(item) to return a str that identifies it, or set durable=False"
            ) from exc
        if type(key) is not str:
            raise TypeError(
                f"{self.name}.item_key returned {_brief(key)} for {self._what(index, item)}; it must return a str"
            )
        return key

    def _load(self, blob: bytes, index: int | None, item: Any) -> Any:
        try:
            return pickle.loads(blob)
        except Exception as exc:
            raise _store_error(
                f"{self.name}: the recorded result of {self._what(index, item)} cannot be unpickled "
                f"({type(exc).__name__}: {exc}); bump {self.name}.version to compute it again"
            ) from exc

    def _pending(self, key: str) -> Pending:
        pending = self.inflight[key]
        if pending is None:
            pending = self.inflight[key] = Pending()
        return pending

    def _keep(self, key: str, value: Any, index: int | None, item: Any) -> None:
        """Record ``value`` under ``key``: pickled now, committed by the journal soon."""
        try:
            blob = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise self._refuse(key, value, index, item, exc) from exc
        self.seen[key] = None
        self.journal.append((self.node_id, key, blob))
        pending = self.inflight.pop(key)
        if pending is not None:
            pending.set(pickle.loads(blob))

    def _refuse(self, key: str, value: Any, index: int | None, item: Any, exc: Exception) -> TypeError:
        """The error for a result that cannot be pickled (the item fails: never a silent re-run)."""
        self._drop(key, None, failure=False)
        return TypeError(
            f"{self.name}: the result of {self._what(index, item)} ({_brief(item)}) is {_brief(value)}, "
            f"which cannot be pickled ({type(exc).__name__}: {exc}), so a durable run cannot record it: "
            f"return a picklable value, or set durable=False on {self.name}"
        )

    def _drop(self, key: str, error: BaseException | None, *, failure: bool = True) -> None:
        """``key``'s computation ended without a result: a duplicate waiting for it tries itself."""
        pending = self.inflight.pop(key, None)
        if pending is not None:
            pending.set(MISSING)
        if not failure:
            return
        if error is None:
            text = "failed; exec_fallback's value stood in (not recorded)"
        elif isinstance(error, Exception):
            text = f"{type(error).__name__}: {error}"[:1000]
        else:
            return  # cancelled or interrupted: not a failure of the item
        self.journal.append(("failure", self.node_id, key, text))

    # -- the ItemRunner's hooks, by index ---------------------------------------------------------------

    def lookup(self, index: int, item: Any) -> Any:
        """The recorded result of ``item``, :data:`MISSING` (then the item is this batch's to
        compute), or a :class:`Pending` (the same key is being computed by another item).

        Raises:
            TypeError: the item has no key (not JSON, and ``item_key`` not overridden).
        """
        key = self._key(index, item)
        blob = self.stored.get(key) if self.stored else None
        if blob is not None:
            self.used[key] = None
            return self._load(blob, index, item)
        if key in self.seen:
            return Reread(self, key, index, item)
        if key in self.inflight:
            return self._pending(key)
        self.inflight[key] = None
        self.keys[index] = key
        return MISSING

    async def reread(self, key: str, index: int | None, item: Any) -> Any:
        """The result this batch recorded for ``key``, read back from the store (a duplicate)."""
        blob = await self.journal.call("load_result", self.node_id, key)
        if blob is None:  # pragma: no cover - the store lost what it committed
            raise _store_error(f"{self.name}: the result of {self._what(index, item)} was recorded but is gone")
        return self._load(blob, index, item)

    def record(self, index: int, item: Any, value: Any) -> None:
        """Keep ``value``, the result ``exec`` returned for item ``index``.

        Raises:
            TypeError: the value cannot be pickled (the item then fails: never a silent re-run).
        """
        self._keep(self.keys.pop(index), value, index, item)

    def settle(
        self, index: int, error: BaseException | None, token: contextvars.Token[tuple[str, ...]] | None = None
    ) -> None:
        """Item ``index`` is over.  Without a recorded result, it failed with ``error`` (recorded as
        a failure: a resumed run tries it again), was cancelled, or (``error`` None) its
        ``exec_fallback`` stood in (recorded as a failure too).  ``token``: :meth:`enter`'s."""
        if token is not None:
            _place.reset(token)
        key = self.keys.pop(index, None)
        if key is not None:
            self._drop(key, error)

    def replayed(self) -> bool:
        """Count a replayed item; True once per :data:`REPLAY_CHECKPOINT` (time to yield to Trio)."""
        self.replays += 1
        return not self.replays & (REPLAY_CHECKPOINT - 1)

    def enter(self, index: int) -> contextvars.Token[tuple[str, ...]]:
        """Param set ``index`` of a batch flow starts its sub-run: its steps are placed under its key."""
        return _place.set((*self.place, f"[{self.keys[index]}]"))

    def backlogged(self) -> bool:
        return self.journal.backlogged()

    async def wait_for_room(self) -> None:
        await self.journal.wait_for_room()

    def finished(self) -> None:
        """The batch went through all its items: mark the recorded keys it did not meet stale."""
        used = self.used
        unused = [key for key in self.stored if key not in used] if len(used) < len(self.stored) else []
        revived = [key for key in self.stale if key in used]
        self.journal.append(("finished", self.node_id, self.run_id, self.place_text, self.version, unused, revived))
        self.stored, self.used = {}, {}

    # -- the fast path ----------------------------------------------------------------------------------

    def wrap(self, call: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
        """``call`` with the done-before? and record stages around it: see :class:`Recorder`.

        A replayed item does not yield to Trio, but every :data:`REPLAY_CHECKPOINT`-th one
        does, so a batch replaying a million items shares the run.  A plain ``def`` call
        yields after it, as the pool does.
        """
        seen = self.seen
        stored = self.stored
        used = self.used
        inflight = self.inflight
        journal = self.journal
        queue = journal.queue
        key_of = self.key_of
        canonical = key_of is canonical_key
        node_id = self.node_id
        dumps, loads = pickle.dumps, pickle.loads
        protocol = pickle.HIGHEST_PROTOCOL
        replays = 0

        async def durable(item: Any) -> Any:
            nonlocal replays
            if canonical and type(item) is int and len(key := int.__repr__(item)) <= KEY_TEXT_MAX:
                pass  # canonical_key's answer, without the call
            else:
                try:
                    key = key_of(item)
                except Exception:
                    key = self._key(None, item)  # raises the error that says what to do
            blob = stored.get(key) if stored else None
            if blob is not None:  # recorded by an earlier run
                used[key] = None
                try:
                    value = loads(blob)
                except Exception:
                    value = self._load(blob, None, item)  # raises the error that says what to do
                replays += 1
                if not replays & (REPLAY_CHECKPOINT - 1):
                    await trio.lowlevel.checkpoint()
                return value
            if key in seen:  # a duplicate of an item this batch computed
                return await self.reread(key, None, item)
            if key in inflight:  # a duplicate in flight: wait for its result
                value = await self._pending(key).wait()
                return value if value is not MISSING else await durable(item)
            if type(key) is not str:
                self._key(None, item)  # raises
            if len(queue) + journal.writing >= MAX_BACKLOG:
                await journal.wait_for_room()
            inflight[key] = None
            try:
                value = call(item)
                plain = not is_awaitable(value)
                if not plain:
                    value = await value
            except BaseException as exc:
                self._drop(key, exc)
                raise
            try:
                result = dumps(value, protocol)
            except Exception as exc:
                raise self._refuse(key, value, None, item, exc) from exc
            seen[key] = None
            queue.append((node_id, key, result))
            if len(queue) >= FLUSH_ROWS and not journal.kicked:
                journal.kicked = True
                journal.wake.set()
            pending = inflight.pop(key)
            if pending is not None:
                pending.set(loads(result))
            if plain:
                await trio.lowlevel.checkpoint()
            return value

        return durable


async def recorder_for(node: Node, noun: str = "item") -> Recorder | None:
    """The recorder of a batch of ``node`` starting now, or None when the run is not durable
    (or the node opted out with ``durable=False``)."""
    session = _session.get()
    if session is None or not node.durable:
        return None
    from .store import node_id

    place = _place.get() or (_name(node),)
    text = place_text(place)
    version = str(node.version)
    nid = node_id(session.run_id, text, version)
    session.journal.append(("node", nid, session.run_id, text, version, session.gen))
    stored: dict[str, bytes]
    stale: set[str]
    if session.fresh or nid not in session.known:
        stored, stale = {}, set()
    else:
        stored, stale = await session.journal.call("load_done", nid)
    return Recorder(session, node, place, nid, stored, stale, noun)


# -- flow steps -----------------------------------------------------------------------------------------


class FlowWalk:
    """The durable side of one walk of a flow: its place, its steps' places, the recorded steps.

    ``next(wired)`` advances to the next step and returns the action a resumed
    run recorded for it (the flow then skips it), or :data:`MISSING`.  A flow
    with ``durable=False`` (or inside one) still places its steps (its batches
    are recorded) but neither records nor replays them: on resume it walks again
    from its start.
    """

    __slots__ = ("durable", "flow_place", "ids", "n", "off", "place", "session", "step_place", "visits")

    def __init__(self, session: Session, flow: Node) -> None:
        self.session = session
        self.place = _place.get() or (_name(flow),)
        self.flow_place = place_text(self.place)
        self.ids = session.graph_ids(flow)
        self.visits: dict[str, int] = {}
        self.n = 0
        self.durable = bool(flow.durable) and _steps_recorded.get()
        self.step_place = self.place
        self.off: contextvars.Token[bool] | None = None

    def next(self, wired: Node) -> Any:
        ident = self.ids.get(id(wired)) or _name(wired)
        visits = self.visits[ident] = self.visits.get(ident, 0) + 1
        self.step_place = (*self.place, ident if visits == 1 else f"{ident}@{visits}")
        n = self.n
        self.n = n + 1
        if self.durable:
            return self.session.replay.get((self.flow_place, n), MISSING)
        return MISSING

    def enter(self) -> contextvars.Token[tuple[str, ...]]:
        if not self.durable:
            self.off = _steps_recorded.set(False)
        return _place.set(self.step_place)

    def leave(self, token: contextvars.Token[tuple[str, ...]]) -> None:
        _place.reset(token)
        if self.off is not None:
            _steps_recorded.reset(self.off)
            self.off = None

    def record(self, action: str | None, shared: Any) -> None:
        if self.durable:
            self.session.record_step(self.flow_place, self.n - 1, place_text(self.step_place), action, shared)


def flow_walk(flow: Node) -> FlowWalk | None:
    """The durable side of a walk of ``flow`` starting now, or None outside a durable run."""
    session = _session.get()
    return None if session is None else FlowWalk(session, flow)


# -- a durable run ----------------------------------------------------------------------------------------


def _backend(store: Any) -> tuple[Store, str]:
    """``store=`` as a store object, and how errors name it."""
    from .store import SQLiteStore

    if isinstance(store, (str, Path)):
        store = SQLiteStore(store)
    if not callable(getattr(store, "open", None)):
        raise TypeError(
            f"store must be a path (a SQLite file) or a store object such as trioflow.store.SQLiteStore, not "
            f"{_brief(store)}"
        )
    return store, str(getattr(store, "path", None) or _brief(store))


async def run_apart(node: Node, shared: Any) -> str | None:
    """``node.run(shared)`` called from inside a durable run (from an ``exec``, say): not part of it.

    Such a run has no place of its own in the graph (many items may start it at
    once), so recording it could mix up their results: it runs as it would
    without a store.  Wire it as a step (a flow is a node) to have it recorded,
    or give it ``store=`` and a ``run_id`` of its own.
    """
    session_token = _session.set(None)
    place_token = _place.set(())
    try:
        return await node._step(shared)
    finally:
        _place.reset(place_token)
        _session.reset(session_token)


async def run_durable(node: Node, shared: Any, store: Any, run_id: str | None) -> str | None:
    """``node.run(shared, store=store, run_id=run_id)``: see :meth:`trioflow.Node.run`."""
    from ._flow import Flow
    from .store import new_owner

    name = _name(node)
    if store is None:
        raise ValueError(f"{name}.run(run_id={run_id!r}) needs a store too (store='runs.db', say)")
    if run_id is None:
        run_id = name
    if not isinstance(run_id, str) or not run_id:
        raise TypeError(f"{name}.run: run_id must be a non-empty str, not {run_id!r}")
    backend, label = _backend(store)
    walked = isinstance(node, Flow) and node.durable
    if walked and not isinstance(shared, MutableMapping):
        raise TypeError(
            f"{name}.run(store=...): a durable flow records the top-level keys of shared each step changes, so "
            f"shared must be a dict, not {type(shared).__name__}; set durable=False on the flow to record its "
            "batches only"
        )
    journal = Journal(backend, run_id, new_owner())
    journal.start()
    status = "interrupted"
    propagating: BaseException | None = None
    action: str | None = None
    try:
        lease = await journal.call("lease", run_id, journal.owner, LEASE_SECONDS)
        session = Session(journal, run_id, lease, label)
        if not lease.fresh:
            session.known = await journal.call("recorded", run_id)
        if walked:
            if lease.resumed:
                session.restore(shared, await journal.call("load_steps", run_id, lease.gen))
            session.baseline(shared)
        session_token = _session.set(session)
        place_token = _place.set((name,))
        try:
            with trio.CancelScope() as scope:
                journal.scope = scope
                action = await node._step(shared)
        finally:
            journal.scope = None
            _place.reset(place_token)
            _session.reset(session_token)
        if scope.cancelled_caught:  # only the writer cancels this scope: the store failed
            assert journal.error is not None
            raise journal.error
        status = "finished"
    except BaseException as exc:
        propagating = exc
        if isinstance(exc, Exception):
            status = "failed"
        raise
    finally:
        with trio.CancelScope(shield=True):
            problem = await journal.close(status)
        if problem is not None:
            if propagating is None:
                raise problem
            if propagating is not problem:
                add_note(propagating, f"and the store failed: {problem}")
    return action
