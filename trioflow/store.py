"""Durable runs: where results and flow steps are kept, and ``python -m trioflow.store``.

With a store, ``await flow.run(shared, store="runs.db", run_id="nightly")``
records each finished batch item's result and each finished flow step under
``run_id``; run it again after a crash, a Ctrl-C or a failure and it restores
``shared`` to the last finished step, skips every recorded item and runs only
what is left (the engine side is :mod:`trioflow._durable`).  This module holds
what the records are kept in:

- :class:`SQLiteStore`, the embedded default: one SQLite file (stdlib
  ``sqlite3``, WAL, ``busy_timeout``);
- the :class:`Store` / :class:`Connection` protocol a second backend implements;
- :class:`StoreError` and :class:`LeaseError`;
- the command line, ``python -m trioflow.store PATH [list | show RUN | forget RUN | prune]``.

The schema, the statements and the migrations are all in this module, the
schema first (:data:`SCHEMA`), so a reader sees the whole store in one place.

A second backend
----------------

A run talks to its store through one :class:`Connection`, opened, used and
closed on one writer thread that the run starts for it: the Trio task never
blocks on the store.  Results are appended to an in-memory queue without an
await; the writer commits the queue every 50 ms or 4,096 records with one
:meth:`Connection.put_many` (one transaction), and runs the rare calls the run
awaits (:meth:`~Connection.lease`, :meth:`~Connection.recorded`,
:meth:`~Connection.load_done` once per batch, :meth:`~Connection.load_steps`,
:meth:`~Connection.release`) in between.  So a
backend is plain blocking code: a Postgres one would open a *synchronous*
psycopg connection in :meth:`Store.open` (psycopg's and asyncpg's async
drivers are asyncio-only: they cannot run in a Trio task, and need not), take
the lease with ``SELECT ... FOR UPDATE`` on its runs row (or an advisory lock),
and write a batch with ``executemany``/``COPY`` in one transaction.

Example::

    store = trioflow.store.SQLiteStore("runs.db")
    await flow.run(shared, store=store, run_id="nightly")
    for run in store.runs():
        print(run.run_id, run.status, run.done, run.failed)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import itertools
import operator
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import attrs

__all__ = [
    "Connection",
    "Lease",
    "LeaseError",
    "NodeInfo",
    "RunInfo",
    "SQLiteStore",
    "StepInfo",
    "Store",
    "StoreError",
    "main",
]

# -- the schema ------------------------------------------------------------------------

#: The version this module writes (``PRAGMA user_version``); :data:`MIGRATIONS` gets older files here.
SCHEMA_VERSION = 1

#: The tables of a store, version :data:`SCHEMA_VERSION`.
SCHEMA = """
-- One row per run_id: its generation, its status, and the lease of the process running it.
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    gen         INTEGER NOT NULL,  -- +1 each time a finished run is run again
    status      TEXT NOT NULL,     -- running | finished | failed | interrupted
    owner       TEXT,              -- host:pid:token of the process holding the lease, or NULL
    lease_until REAL,              -- unix time the lease runs out unless renewed
    created     REAL NOT NULL,
    updated     REAL NOT NULL      -- the last commit or lease renewal
);

-- One row per batch (a node at one place in the graph, at one version) of a run.
CREATE TABLE nodes (
    node_id  INTEGER PRIMARY KEY,  -- a hash of (run_id, place, version): see node_id()
    run_id   TEXT NOT NULL,
    place    TEXT NOT NULL,        -- e.g. Pipeline/Grid_1[{"filter":"blur"}]/Blur_1
    version  TEXT NOT NULL,        -- Node.version
    gen      INTEGER NOT NULL,     -- the last generation of the run that ran it
    finished INTEGER NOT NULL      -- 1 once that generation went through all its items
);
CREATE INDEX nodes_by_run ON nodes (run_id, place);

-- One row per item key of a batch: its result, or its last failure.
CREATE TABLE results (
    node_id INTEGER NOT NULL,
    key     TEXT NOT NULL,         -- item_key(item): canonical JSON, or ~ and a hash of it
    status  INTEGER NOT NULL,      -- 0 done (value: the pickled result), 1 failed (value: the error, text)
    value   BLOB,
    stale   INTEGER NOT NULL,      -- 1: the last full pass over the batch did not meet this key (prune drops it)
    PRIMARY KEY (node_id, key)
) WITHOUT ROWID;
CREATE INDEX results_stale ON results (node_id) WHERE stale = 1;  -- few rows: loading a batch finds them at once

-- One row per finished flow step: its action and the top-level keys of shared it changed.
CREATE TABLE steps (
    seq     INTEGER PRIMARY KEY,   -- commit order: a resumed run applies the changes in it
    run_id  TEXT NOT NULL,
    gen     INTEGER NOT NULL,
    flow    TEXT NOT NULL,         -- the place of the flow's walk
    n       INTEGER NOT NULL,      -- the step's number in that walk
    node    TEXT NOT NULL,         -- the place of the step's node
    action  TEXT,
    keys    TEXT NOT NULL,         -- the changed keys, for people (python -m trioflow.store show)
    changes BLOB NOT NULL,         -- pickled ({key: pickled value}, [removed keys])
    at      REAL NOT NULL
);
CREATE INDEX steps_by_run ON steps (run_id, gen, seq);
"""

#: ``user_version`` -> statements that bring a store of that version to the next one.
#: Version 0 is an empty file.  Add the next step here when the schema changes.
MIGRATIONS: dict[int, str] = {0: SCHEMA}


# -- errors, records, the protocol ------------------------------------------------------------


class StoreError(Exception):
    """A store cannot be used: not a store, not writable, locked, written by a newer trioflow.

    The message names the store (its path) and what was being done.  What the
    store had recorded before the error is left as it was.
    """


class LeaseError(StoreError):
    """Another process is running this ``run_id`` now (it holds the run's lease).

    One process per ``run_id`` at a time, so a paid call is never made twice at
    once.  The lease of a process that died (killed, crashed) is taken over at
    once on the same host, and from another host when it runs out (it is renewed
    every few seconds while its process runs).
    """


@attrs.frozen
class Lease:
    """What :meth:`Connection.lease` found: the generation to run and how to start it.

    Attributes:
        gen: the run's generation: 1 for a new ``run_id``, one more each time a
            finished run is run again.
        resumed: the generation did not finish (a crash, an interrupt, a
            failure): its recorded steps are replayed.
        fresh: the ``run_id`` is new, so nothing needs loading.
    """

    gen: int
    resumed: bool
    fresh: bool


@attrs.frozen
class RunInfo:
    """One run as ``list`` shows it."""

    run_id: str
    status: str
    gen: int
    owner: str | None
    nodes: int
    done: int
    failed: int
    steps: int
    created: float
    updated: float
    lease_until: float | None = None  # while a process holds the run: when its lease runs out unless renewed


@attrs.frozen
class NodeInfo:
    """One batch of a run as ``show`` shows it."""

    place: str
    version: str
    gen: int
    finished: bool
    done: int
    failed: int
    stale: int


@attrs.frozen
class StepInfo:
    """One recorded flow step as ``show`` shows it."""

    seq: int
    gen: int
    node: str
    action: str | None
    keys: str
    at: float


#: A record the run appends and :meth:`Connection.put_many` writes, a plain tuple (cheap to make):
#:
#: - ``(node_id, key, pickled_value)``: an item's result (the one kind of three fields, and
#:   by far the most frequent, so it carries no tag);
#:
#: the others start with a tag that says what they are:
#:
#: - ``("failure", node_id, key, error_text)``: an item failed for good (never
#:   replaces a result);
#: - ``("node", node_id, run_id, place, version, gen)``: a batch starts;
#: - ``("finished", node_id, run_id, place, version, stale_keys, revived_keys)``: the
#:   batch went through all its items: ``stale_keys`` were not met (nor other versions' keys),
#:   ``revived_keys`` were met again;
#: - ``("step", run_id, gen, flow, n, node, action, keys, changes, at)``: a flow step finished.
Record = tuple[Any, ...]


class Connection(Protocol):
    """A store opened for one run, used from one thread only (the run's writer thread).

    Every method blocks; none is called from the Trio task.  Errors are
    :class:`StoreError` s that name the store.
    """

    def lease(self, run_id: str, owner: str, seconds: float) -> Lease:
        """Take the lease of ``run_id`` for ``seconds`` (creating the run, or starting its next
        generation if it finished).

        Raises:
            LeaseError: another live process holds it.
        """

    def recorded(self, run_id: str) -> set[int]:
        """The batches of ``run_id`` that have results (so a batch not among them loads nothing)."""

    def load_done(self, node_id: int) -> tuple[dict[str, bytes], set[str]]:
        """The recorded results of a batch (key -> pickled value) and which of those keys are stale."""

    def load_result(self, node_id: int, key: str) -> bytes | None:
        """One recorded result (for a duplicate of an item its batch computed), or None."""

    def load_steps(self, run_id: str, gen: int) -> list[tuple[str, int, str, str | None, bytes]]:
        """The finished steps of a generation, in commit order: ``(flow, n, node, action, changes)``."""

    def put_many(self, run_id: str, owner: str, seconds: float, records: Sequence[Record]) -> None:
        """Write ``records`` in order, in one transaction, and renew the lease (no records: renew only).

        Raises:
            LeaseError: the lease was lost (it ran out and another process took it).
        """

    def release(self, run_id: str, owner: str, status: str) -> None:
        """Give the lease back; ``status`` is ``finished``, ``failed`` or ``interrupted``."""

    def forget(self, run_id: str) -> bool:
        """Delete everything of ``run_id``; False if there was nothing."""

    def close(self) -> None:
        """Close the connection."""


class Store(Protocol):
    """What a run is given as ``store=``: something that opens a :class:`Connection`.

    ``open`` is called on the run's writer thread, once per run.
    """

    def open(self) -> Connection:
        """A connection to use from the calling thread only."""


def node_id(run_id: str, place: str, version: str) -> int:
    """The id of a batch in the store: a signed 64-bit hash of its run, place and version."""
    digest = hashlib.blake2b(f"{run_id}\0{place}\0{version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# -- owners and leases ------------------------------------------------------------------------------


def new_owner() -> str:
    """``host:pid:token``, the name of one run's lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    return True


@attrs.frozen
class _Holder:
    """What this host can tell of the process holding a lease (see :func:`_holder`)."""

    pid: int | None
    alive: bool | None  # None: another host's process (or no pid in the owner), which cannot be looked at
    ran_out: bool  # the lease was not renewed in time

    @property
    def gone(self) -> bool:
        """The lease can be taken over: it ran out, or its process on this host died."""
        return self.ran_out or self.alive is False


def _holder(owner: str, until: float | None, now: float) -> _Holder:
    """The holder of the lease ``owner`` (``host:pid:token``) took until ``until``, as seen at ``now``.

    The one reading of a lease: taking it over (:meth:`SQLiteConnection.lease`, ``forget``) and
    the command line's status of a run both go by it.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    pid = int(pid_text) if pid_text.isdigit() else None
    alive = _alive(pid) if pid is not None and host == socket.gethostname() else None
    return _Holder(pid=pid, alive=alive, ran_out=until is None or now > until)


# -- SQLite ------------------------------------------------------------------------------------------------


@attrs.define
class SQLiteStore:
    """The embedded store: one SQLite file, written by one connection per run.

    Args:
        path: the database file; created (with its tables) on first use.
        busy_timeout: seconds a write waits for another process's write lock
            before it fails with a :class:`StoreError` ("locked").

    The file is in WAL mode with ``synchronous=NORMAL``: a commit survives a
    killed process (what a crash of the *program* is); after a power cut the
    last commits before it may be lost, which costs re-running those items,
    never a wrong result.  Readers (the command line, :meth:`runs`) do not block
    a run.  The methods below are for scripts and the command line; a run opens
    its own connection (:meth:`open`) on its writer thread.

    Example::

        store = SQLiteStore("runs.db")
        await flow.run(shared, store=store, run_id="nightly")
        print([(run.run_id, run.done) for run in store.runs()])
    """

    path: Path = attrs.field(converter=Path)
    busy_timeout: float = 5.0

    def open(self) -> SQLiteConnection:
        """A connection (creating or migrating the schema), for the calling thread only."""
        return SQLiteConnection(self)

    @contextlib.contextmanager
    def _existing(self) -> Iterator[SQLiteConnection]:
        """A connection to the store, which must exist (looking into it never creates one)."""
        if not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        with contextlib.closing(self.open()) as conn:
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._existing() as conn:
            yield conn.db

    def runs(self) -> list[RunInfo]:
        """Every run of the store, the last updated first."""
        with self._reading() as db:
            rows = _query(self, db, _RUNS, (), "reading its runs")
        return [RunInfo(*row) for row in rows]

    def nodes(self, run_id: str) -> list[NodeInfo]:
        """The batches of ``run_id``, in the order they were first run."""
        with self._reading() as db:
            rows = _query(self, db, _NODES, (run_id,), f"reading run {run_id!r}")
        return [NodeInfo(place, version, gen, bool(fin), done, failed, stale) for place, version, gen, fin, done,
                failed, stale in rows]

    def steps(self, run_id: str) -> list[StepInfo]:
        """The recorded flow steps of ``run_id``'s current generation, in order."""
        with self._reading() as db:
            rows = _query(self, db, _STEPS, (run_id,), f"reading run {run_id!r}")
        return [StepInfo(*row) for row in rows]

    def forget(self, run_id: str) -> bool:
        """Delete everything of ``run_id`` (not while a process runs it); False if there was nothing.

        Raises:
            LeaseError: a live process is running it.
        """
        with self._existing() as conn:
            return conn.forget(run_id)

    def prune(self) -> dict[str, int]:
        """Drop what no run will use again; return how many rows of each kind went.

        Dropped: results marked stale (their key did not occur in the last full
        pass over their batch: the item changed or went away), results and
        batches of an older version or of a place the last finished generation
        of their run did not reach, and steps of past generations.
        """
        with self._existing() as conn:
            return conn.prune()


def _describe(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"{text}: another process held a write lock for longer than busy_timeout"
    if "not a database" in text:
        return f"{text}: this file is not a trioflow store (nor any SQLite database)"
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return f"{text}: the store and its directory must be writable (SQLite adds -wal and -shm files beside it)"
    return text


def _error(store: SQLiteStore, exc: sqlite3.Error, doing: str) -> StoreError:
    return StoreError(f"store {store.path}: {doing}: {_describe(exc)}")


def _query(store: SQLiteStore, db: sqlite3.Connection, sql: str, args: tuple[Any, ...], doing: str) -> list[Any]:
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise _error(store, exc, doing) from exc


_RUNS = """
SELECT r.run_id, r.status, r.gen, r.owner,
       (SELECT COUNT(*) FROM nodes n WHERE n.run_id = r.run_id),
       (SELECT COUNT(*) FROM results x JOIN nodes n USING (node_id) WHERE n.run_id = r.run_id AND x.status = 0),
       (SELECT COUNT(*) FROM results x JOIN nodes n USING (node_id) WHERE n.run_id = r.run_id AND x.status = 1),
       (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.run_id AND s.gen = r.gen),
       r.created, r.updated, r.lease_until
FROM runs r ORDER BY r.updated DESC
"""

_NODES = """
SELECT n.place, n.version, n.gen, n.finished,
       (SELECT COUNT(*) FROM results x WHERE x.node_id = n.node_id AND x.status = 0),
       (SELECT COUNT(*) FROM results x WHERE x.node_id = n.node_id AND x.status = 1),
       (SELECT COUNT(*) FROM results x WHERE x.node_id = n.node_id AND x.stale = 1)
FROM nodes n WHERE n.run_id = ? ORDER BY n.place
"""

_STEPS = """
SELECT s.seq, s.gen, s.node, s.action, s.keys, s.at FROM steps s JOIN runs r USING (run_id)
WHERE s.run_id = ? AND s.gen = r.gen ORDER BY s.seq
"""

#: Rows per INSERT of results (a power of two; 3 parameters a row, under SQLite's limit of 32,766).
_ROWS_PER_INSERT = 256


@functools.lru_cache(maxsize=16)
def _put_results_sql(rows: int) -> str:
    """The INSERT of ``rows`` results (their statements stay in sqlite3's statement cache)."""
    return "INSERT OR REPLACE INTO results (node_id, key, status, value, stale) VALUES " + ",".join(
        ["(?, ?, 0, ?, 0)"] * rows
    )


_PUT_FAILURE = (
    "INSERT INTO results (node_id, key, status, value, stale) VALUES (?, ?, 1, ?, 0) "
    "ON CONFLICT (node_id, key) DO UPDATE SET value = excluded.value WHERE status = 1"
)
_PUT_NODE = (
    "INSERT INTO nodes (node_id, run_id, place, version, gen, finished) VALUES (?, ?, ?, ?, ?, 0) "
    "ON CONFLICT (node_id) DO UPDATE SET gen = excluded.gen, finished = 0"
)
_PUT_STEP = (
    "INSERT INTO steps (run_id, gen, flow, n, node, action, keys, changes, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteConnection:
    """A :class:`Connection` to a :class:`SQLiteStore`; see the protocol for what each method does."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        try:
            self.db = sqlite3.connect(store.path, timeout=store.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise _error(store, exc, "opening it") from exc
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(store.busy_timeout * 1000)}")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
            # A process killed mid-run leaves its log uncheckpointed: move it into the database now,
            # before the run's first commit (never waiting for another process's readers or writer).
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self.db.close()
            raise _error(store, exc, "opening it") from exc
        except BaseException:
            self.db.close()
            raise

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.store.path}: written by a newer trioflow (schema {version}; this one knows "
                f"{SCHEMA_VERSION}): upgrade trioflow to use it"
            )
        with self._transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                version += 1
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _fail(self, exc: sqlite3.Error, doing: str) -> StoreError:
        return _error(self.store, exc, doing)

    # -- the protocol ---------------------------------------------------------------------------

    def lease(self, run_id: str, owner: str, seconds: float) -> Lease:
        now = time.time()
        try:
            with self._transaction():
                row = self.db.execute(
                    "SELECT gen, status, owner, lease_until FROM runs WHERE run_id = ?", (run_id,)
                ).fetchone()
                if row is None:
                    self.db.execute(
                        "INSERT INTO runs VALUES (?, 1, 'running', ?, ?, ?, ?)",
                        (run_id, owner, now + seconds, now, now),
                    )
                    return Lease(gen=1, resumed=False, fresh=True)
                gen, status, holder, until = row
                if holder is not None and holder != owner and not _holder(holder, until, now).gone:
                    raise LeaseError(
                        f"store {self.store.path}: run {run_id!r} is being run by another process ({holder}; its "
                        f"lease runs {until - now:.0f} s more unless renewed): one process per run_id at a time, "
                        "so no call is made twice at once. Wait for it to end or stop it (a killed process's "
                        "lease is taken over at once on its host, and from another host when it runs out)"
                    )
                resumed = status != "finished"
                if not resumed:
                    gen += 1
                    self.db.execute("DELETE FROM steps WHERE run_id = ? AND gen < ?", (run_id, gen))
                self.db.execute(
                    "UPDATE runs SET gen = ?, status = 'running', owner = ?, lease_until = ?, updated = ? "
                    "WHERE run_id = ?",
                    (gen, owner, now + seconds, now, run_id),
                )
                return Lease(gen=gen, resumed=resumed, fresh=False)
        except sqlite3.Error as exc:
            raise self._fail(exc, f"taking the lease of run {run_id!r}") from exc

    def recorded(self, run_id: str) -> set[int]:
        try:
            return {nid for (nid,) in self.db.execute(
                "SELECT node_id FROM nodes n WHERE run_id = ? AND EXISTS "
                "(SELECT 1 FROM results x WHERE x.node_id = n.node_id AND x.status = 0)",
                (run_id,),
            )}
        except sqlite3.Error as exc:
            raise self._fail(exc, f"loading the batches of run {run_id!r}") from exc

    def load_done(self, node_id: int) -> tuple[dict[str, bytes], set[str]]:
        try:
            done = dict(self.db.execute("SELECT key, value FROM results WHERE node_id = ? AND status = 0", (node_id,)))
            stale = {k for (k,) in self.db.execute(
                "SELECT key FROM results INDEXED BY results_stale WHERE node_id = ? AND stale = 1 AND status = 0",
                (node_id,),
            )}
        except sqlite3.Error as exc:
            raise self._fail(exc, "loading recorded results") from exc
        return done, stale

    def load_result(self, node_id: int, key: str) -> bytes | None:
        try:
            row = self.db.execute(
                "SELECT value FROM results WHERE node_id = ? AND key = ? AND status = 0", (node_id, key)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc, "loading a recorded result") from exc
        return None if row is None else row[0]

    def load_steps(self, run_id: str, gen: int) -> list[tuple[str, int, str, str | None, bytes]]:
        try:
            return self.db.execute(
                "SELECT flow, n, node, action, changes FROM steps WHERE run_id = ? AND gen = ? ORDER BY seq",
                (run_id, gen),
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc, f"loading the steps of run {run_id!r}") from exc

    def put_many(self, run_id: str, owner: str, seconds: float, records: Sequence[Record]) -> None:
        now = time.time()
        db = self.db
        try:
            with self._transaction():
                renewed = db.execute(
                    "UPDATE runs SET lease_until = ?, updated = ? WHERE run_id = ? AND owner = ?",
                    (now + seconds, now, run_id, owner),
                ).rowcount
                if renewed != 1:
                    raise LeaseError(
                        f"store {self.store.path}: run {run_id!r} lost its lease (it ran out and another process "
                        f"took the run over); {len(records)} records were not written"
                    )
                for size, group in itertools.groupby(records, len):
                    if size == 3:
                        self._put_results(list(group))
                    else:
                        for kind, same in itertools.groupby(group, operator.itemgetter(0)):
                            self._put(kind, same)
        except sqlite3.Error as exc:
            raise self._fail(exc, f"writing {len(records)} records of run {run_id!r}") from exc

    def _put_results(self, records: list[Record]) -> None:
        """Results, many rows per statement (:data:`_ROWS_PER_INSERT`): each statement is one
        crossing into SQLite, where the GIL is released, instead of one per row."""
        db = self.db
        start, end = 0, len(records)
        while start < end:
            rows = _ROWS_PER_INSERT
            while rows > end - start:
                rows //= 2
            db.execute(_put_results_sql(rows), list(itertools.chain.from_iterable(records[start : start + rows])))
            start += rows

    def _put(self, kind: str, records: Iterator[Record]) -> None:
        # A record is (kind, *parameters); plain ``?`` placeholders take the parameters (numbered
        # ``?2`` with a sequence is deprecated since Python 3.12 and an error from 3.14).
        if kind == "failure":
            self.db.executemany(_PUT_FAILURE, (record[1:] for record in records))
        elif kind == "node":
            self.db.executemany(_PUT_NODE, (record[1:] for record in records))
        elif kind == "step":
            self.db.executemany(_PUT_STEP, (record[1:] for record in records))
        elif kind == "finished":
            for record in records:
                self._finished(*record[1:])
        else:  # pragma: no cover - the engine writes only the kinds above
            raise ValueError(f"unknown record kind {kind!r}")

    def _finished(
        self, nid: int, run_id: str, place: str, version: str, stale: Sequence[str], revived: Sequence[str]
    ) -> None:
        db = self.db
        db.execute("UPDATE nodes SET finished = 1 WHERE node_id = ?", (nid,))
        db.executemany("UPDATE results SET stale = 1 WHERE node_id = ? AND key = ?", ((nid, k) for k in stale))
        db.executemany("UPDATE results SET stale = 0 WHERE node_id = ? AND key = ?", ((nid, k) for k in revived))
        db.execute(
            "UPDATE results SET stale = 1 WHERE stale = 0 AND node_id IN "
            "(SELECT node_id FROM nodes WHERE run_id = ? AND place = ? AND version <> ?)",
            (run_id, place, version),
        )

    def release(self, run_id: str, owner: str, status: str) -> None:
        try:
            with self._transaction():
                self.db.execute(
                    "UPDATE runs SET owner = NULL, lease_until = NULL, status = ?, updated = ? "
                    "WHERE run_id = ? AND owner = ?",
                    (status, time.time(), run_id, owner),
                )
        except sqlite3.Error as exc:
            raise self._fail(exc, f"releasing the lease of run {run_id!r}") from exc

    def forget(self, run_id: str) -> bool:
        try:
            with self._transaction():
                row = self.db.execute("SELECT owner, lease_until FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if row is not None and row[0] is not None and not _holder(row[0], row[1], time.time()).gone:
                    raise LeaseError(
                        f"store {self.store.path}: run {run_id!r} is being run by {row[0]}: stop it before "
                        "forgetting it"
                    )
                db = self.db
                db.execute(
                    "DELETE FROM results WHERE node_id IN (SELECT node_id FROM nodes WHERE run_id = ?)", (run_id,)
                )
                gone = db.execute("DELETE FROM nodes WHERE run_id = ?", (run_id,)).rowcount
                gone += db.execute("DELETE FROM steps WHERE run_id = ?", (run_id,)).rowcount
                gone += db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount
                return gone > 0
        except sqlite3.Error as exc:
            raise self._fail(exc, f"forgetting run {run_id!r}") from exc

    def prune(self) -> dict[str, int]:
        """See :meth:`SQLiteStore.prune`."""
        db = self.db
        # batches the last finished generation of their run did not reach (another version, a place gone)
        unused = (
            "SELECT n.node_id FROM nodes n JOIN runs r USING (run_id) WHERE r.status = 'finished' AND n.gen < r.gen"
        )
        try:
            with self._transaction():
                results = db.execute("DELETE FROM results WHERE stale = 1").rowcount
                results += db.execute(f"DELETE FROM results WHERE node_id IN ({unused})").rowcount
                nodes = db.execute(f"DELETE FROM nodes WHERE node_id IN ({unused})").rowcount
                steps = db.execute(
                    "DELETE FROM steps WHERE gen < (SELECT r.gen FROM runs r WHERE r.run_id = steps.run_id)"
                ).rowcount
            db.execute("VACUUM")
        except sqlite3.Error as exc:
            raise self._fail(exc, "pruning it") from exc
        return {"results": results, "nodes": nodes, "steps": steps}

    def close(self) -> None:
        self.db.close()


# -- the command line -----------------------------------------------------------------------------------------


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _status(run: RunInfo, now: float) -> str:
    """A run's status for people: for a run that is "running", whether its process still is.

    A process of this host is looked at (a ``kill -9`` leaves its lease behind); one of
    another host cannot be, so its run may be running until its lease runs out.
    """
    if run.owner is None:
        return run.status
    holder = _holder(run.owner, run.lease_until, now)
    if holder.alive is False:
        return f"interrupted (process {holder.pid} is gone)"
    if holder.alive:  # and when it stopped renewing its lease (stopped with Ctrl-Z, hung), a run may take it over
        if holder.ran_out:  # the pid may also have been reused by an unrelated process since a kill
            return f"stalled or gone (its lease ran out; pid {holder.pid} runs, maybe another process by now)"
        return f"running (pid {holder.pid})"
    if run.lease_until is None or holder.ran_out:
        return f"interrupted (the lease of {run.owner} ran out)"
    return f"may be running ({run.owner} on another host; its lease runs {run.lease_until - now:.0f} s more)"


def _count(n: int, noun: str) -> str:
    """``no runs``, ``1 run``, ``2 runs``."""
    return f"{n or 'no'} {noun}{'' if n == 1 else 's'}"


def _table(
    out: IO[str], title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], rich: bool, empty: str = ""
) -> None:
    """Rows as a rich table on a terminal (if rich is installed), else as aligned plain text.

    With no rows there is no table, on a terminal or not: the title, then ``empty`` if given
    (the title may say it already: "no runs in runs.db").
    """
    if not rows:
        print(title, file=out)
        if empty:
            print(empty, file=out)
        return
    if rich:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(*headers, title=title, title_justify="left")
            for row in rows:
                table.add_row(*row)
            Console(file=out).print(table)
            return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(title, file=out)
    for row in (headers, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """``python -m trioflow.store PATH [list | show RUN | forget RUN | prune]``; returns the exit code.

    ``list`` (the default): every run with its status, its batches, items done
    and failed, steps recorded and last update.  A run whose lease is held says
    whether its process still is running: ``running (pid 1234)``, ``interrupted
    (process 1234 is gone)`` after a ``kill -9`` on this host; a process of
    another host cannot be looked at, so its run ``may be running`` until its
    lease runs out.  ``show RUN``: each batch of
    the run (place, version, done, failed, stale) and its recorded steps.
    ``forget RUN``: delete the run.  ``prune``: drop what no run will use again.
    Plain text when the output is not a terminal, a rich table when it is.
    """
    parser = argparse.ArgumentParser(prog="python -m trioflow.store", description="Look into a trioflow store.")
    parser.add_argument("path", help="the store's SQLite file")
    parser.add_argument("command", nargs="?", default="list", choices=["list", "show", "forget", "prune"])
    parser.add_argument("run", nargs="?", help="the run_id (show, forget)")
    args = parser.parse_args(argv)
    out = out if out is not None else sys.stdout
    rich = out.isatty()
    if args.command in ("show", "forget") and args.run is None:
        parser.error(f"{args.command} needs a RUN")
    store = SQLiteStore(args.path)
    try:
        if args.command == "list":
            runs, now = store.runs(), time.time()
            rows = [
                [r.run_id, _status(r, now), str(r.gen), str(r.nodes), str(r.done), str(r.failed), str(r.steps),
                 _when(r.updated)]
                for r in runs
            ]
            headers = ["run", "status", "gen", "batches", "done", "failed", "steps", "updated"]
            _table(out, f"{_count(len(runs), 'run')} in {store.path}", headers, rows, rich)
        elif args.command == "show":
            runs = [r for r in store.runs() if r.run_id == args.run]
            if not runs:
                print(f"no run {args.run!r} in {store.path}", file=sys.stderr)
                return 1
            (run,) = runs
            title = (f"run {run.run_id!r}: {_status(run, time.time())}, generation {run.gen}, {run.done} done, "
                     f"{run.failed} failed, updated {_when(run.updated)}")
            nodes = [
                [n.place, n.version or "-", str(n.gen), "yes" if n.finished else "no", str(n.done), str(n.failed),
                 str(n.stale)]
                for n in store.nodes(args.run)
            ]
            headers = ["batch", "version", "gen", "finished", "done", "failed", "stale"]
            _table(out, title, headers, nodes, rich, empty="no batches recorded")
            steps = [[str(s.seq), s.node, repr(s.action), s.keys or "-", _when(s.at)] for s in store.steps(args.run)]
            _table(out, f"{_count(len(steps), 'step')} recorded", ["step", "node", "action", "changed", "at"], steps,
                   rich)
        elif args.command == "forget":
            if not store.forget(args.run):
                print(f"no run {args.run!r} in {store.path}", file=sys.stderr)
                return 1
            print(f"forgot run {args.run!r}", file=out)
        else:
            gone = store.prune()
            print(f"pruned {gone['results']} results, {gone['nodes']} batches, {gone['steps']} steps", file=out)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
