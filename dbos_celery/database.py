"""Every SQL statement dbos_celery runs, the connection pool, and transactions.

Statements are written with SQLAlchemy Core and built once, at import, with
named bind parameters; each is compiled to SQL once per schema and run on the
driver's connection directly (statement building and SQLAlchemy's execution
layer cost more than the round trip they wrap). Each statement is a small
function taking an :class:`Executor`.

Two backends: Postgres through psycopg 3 (production), and a SQLite file
(the embedded default: one machine, its processes serialized by the file's
write lock). Functions that differ between them are in ``schema.py``; the
few Postgres statements that modify rows inside a CTE run as two statements
in one transaction on SQLite (``Executor.atomic``).

``Database.now`` runs one statement in autocommit mode (one round trip);
``Database.run`` runs several in one transaction. Lost connections (SQLite:
a lock held too long) are retried with backoff for a bounded time, then
surface as :class:`DatabaseUnavailableError` with the driver error as
``__cause__``. Nothing else in the package imports SQLAlchemy or a driver.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import (
    ARRAY,
    Engine,
    Float,
    Integer,
    LargeBinary,
    NullPool,
    Text,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from . import schema as s
from .errors import ConfigurationError, DatabaseUnavailableError, SchemaVersionError

log = logging.getLogger("dbos_celery")
T = TypeVar("T")

# workflow statuses
ENQUEUED = "ENQUEUED"
PENDING = "PENDING"
SUCCESS = "SUCCESS"
ERROR = "ERROR"
CANCELLED = "CANCELLED"
WAITING = "WAITING"  # parked: no runner; published again when woken
WOKEN = "WOKEN"  # not a status: the sweep's mark of a parked row it woke (now ENQUEUED)
MAX_RECOVERY_ATTEMPTS_EXCEEDED = "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
FINAL_STATUSES = (SUCCESS, ERROR, CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED)

wf = s.workflows
st = s.steps
msg = s.messages


DBAPIConnection = psycopg.Connection[Any] | sqlite3.Connection


class Executor:
    """Runs Core statements on one driver connection; SQL compiled once."""

    __slots__ = ("_conn", "_db", "sqlite")

    def __init__(self, conn: DBAPIConnection, database: Database) -> None:
        self._conn = conn
        self._db = database
        self.sqlite = database.sqlite

    def rows(
        self, stmt: ClauseElement, params: dict[str, Any] | None = None, *, cache: bool = True
    ) -> list[tuple[Any, ...]]:
        cur = self._execute(stmt, params, cache)
        return cur.fetchall() if cur.description is not None else []

    def first(self, stmt: ClauseElement, params: dict[str, Any] | None = None) -> Any:
        cur = self._execute(stmt, params, True)
        if self.sqlite:  # step the statement to its end before anything else runs
            got = cur.fetchall()
            return got[0] if got else None
        return cur.fetchone()

    def count(self, stmt: ClauseElement, params: dict[str, Any] | None = None) -> int:
        """Rows changed by an UPDATE / DELETE / INSERT."""
        return int(self._execute(stmt, params, True).rowcount)

    def atomic(self) -> AbstractContextManager[None]:
        """One transaction around several statements on SQLite, where a
        Postgres statement that changes rows in a CTE is split in two."""
        if isinstance(self._conn, sqlite3.Connection) and not self._conn.in_transaction:
            return _sqlite_transaction(self._conn)
        return nullcontext()

    def _execute(self, stmt: ClauseElement, params: dict[str, Any] | None, cache: bool) -> Any:
        sql, defaults = self._db.compiled(stmt, cache)
        values = {**defaults, **params} if params else defaults
        if self.sqlite:
            values = {k: _sqlite_value(v) for k, v in values.items()}
        return self._conn.execute(sql, values)


def _sqlite_value(value: Any) -> Any:
    # lists travel as JSON arrays (schema.in_list), times as epoch seconds
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.timestamp()
    return value


@contextmanager
def _sqlite_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE: take the write lock up front, so that a transaction that
    # reads and then writes waits for the lock instead of failing
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _sqlite_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=FULL")


def _transient(exc: BaseException) -> bool:
    """A lost connection (Postgres) or a lock held too long (SQLite): retried."""
    if isinstance(exc, psycopg.OperationalError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text_ = str(exc).lower()
        return "locked" in text_ or "busy" in text_ or "unable to open" in text_
    return False


class Database:
    """Owns the connection pool of one process (made anew after a fork)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        schema: str = "dbos_celery",
        retry_timeout: float = 10.0,
        pool_size: int = 5,
    ) -> None:
        if (url is None) == (engine is None):
            raise ConfigurationError("pass exactly one of database_url or engine")
        sa_url = make_url(url) if url is not None else engine.url  # type: ignore[union-attr]
        backend = sa_url.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"database_url must be a postgresql:// or sqlite:/// URL, got {backend!r}"
            )
        if engine is not None and engine.dialect.driver != "psycopg":
            raise ConfigurationError(
                "a caller's engine must use psycopg 3 (postgresql+psycopg://), "
                f"not {engine.dialect.driver!r}"
            )
        _quote(schema)
        self.sqlite = backend == "sqlite"
        if self.sqlite:
            if not sa_url.database or sa_url.database == ":memory:":
                raise ConfigurationError(
                    "database_url: SQLite needs a file (sqlite:///path/to/file.db): an in-memory "
                    "database is not shared between worker processes"
                )
            # absolute: a worker that changes directory still finds it
            path = os.path.abspath(sa_url.database)
            self.url = sa_url.set(drivername="sqlite+pysqlite", database=path)
        else:
            self.url = sa_url.set(drivername="postgresql+psycopg")
        self.schema = schema
        self.retry_timeout = retry_timeout
        self.pool_size = pool_size
        self._given = engine
        self._engine: Engine | None = None
        self._pid = 0
        self._sql: dict[int, tuple[str, dict[str, Any]]] = {}
        self._migrated = False
        self.auto_migrate = True

    # --- connections --------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The pool of this process; its connections are in autocommit mode."""
        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None and self._given is None:
                # inherited across fork: drop the parent's sockets untouched
                self._engine.dispose(close=False)
            self._engine = self._given or self._create_engine(pool_size=self.pool_size,
                                                              max_overflow=50)  # fmt: skip
            self._pid = os.getpid()
        return self._engine

    def _create_engine(self, **pool: Any) -> Engine:
        if not self.sqlite:
            return create_engine(
                self.url, pool_recycle=3600, pool_reset_on_return=None,
                connect_args={"autocommit": True}, **pool,
            )  # fmt: skip
        engine = create_engine(
            self.url, pool_reset_on_return=None, paramstyle="named",
            # isolation_level None: autocommit; transactions are begun explicitly
            connect_args={"check_same_thread": False, "isolation_level": None, "timeout": 5.0},
            **pool,
        )  # fmt: skip
        event.listen(engine, "connect", _sqlite_connect)
        return engine

    def dispose(self) -> None:
        """Close the pool this object created (never a caller's engine)."""
        if self._engine is not None and self._given is None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None

    def compiled(self, stmt: ClauseElement, cache: bool = True) -> tuple[str, dict[str, Any]]:
        key = id(stmt)
        got = self._sql.get(key) if cache else None
        if got is not None:
            return got
        c = stmt.compile(
            dialect=self.engine.dialect,
            schema_translate_map={None: None if self.sqlite else self.schema},
            render_schema_translate=True,
            compile_kwargs={"render_postcompile": True},
        )
        assert isinstance(c, SQLCompiler)
        made = (str(c), dict(c.construct_params(_check=False) or {}))
        if cache:
            self._sql[key] = made
        return made

    def _attempt(self, body: Callable[[DBAPIConnection], T]) -> T:
        if not self._migrated and self.auto_migrate:
            self.migrate()
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.05
        while True:
            try:
                raw = self.engine.raw_connection()
            except (DBAPIError, psycopg.OperationalError, sqlite3.OperationalError) as exc:
                cause: BaseException = exc  # the pool does not wrap
                if not _transient(getattr(exc, "orig", None) or exc):
                    raise
            else:
                conn: DBAPIConnection = raw.driver_connection  # type: ignore[assignment]
                given = self._given is not None and not conn.autocommit  # type: ignore[union-attr]
                try:
                    if given:
                        conn.autocommit = True  # type: ignore[union-attr]
                    return body(conn)
                except (psycopg.OperationalError, sqlite3.OperationalError) as exc:
                    if not _transient(exc):
                        raise
                    cause = exc
                    raw.invalidate(exc)
                    given = False
                finally:
                    if given and not conn.closed:  # type: ignore[union-attr]
                        conn.autocommit = False  # type: ignore[union-attr]  # as it was
                    raw.close()
            if time.monotonic() >= deadline:
                raise DatabaseUnavailableError(_describe(cause)) from cause
            log.warning("database unavailable (%s); retrying", _describe(cause))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _transaction(self, conn: DBAPIConnection) -> AbstractContextManager[Any]:
        if isinstance(conn, sqlite3.Connection):
            return _sqlite_transaction(conn)
        return conn.transaction()

    def now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(executor, *args)`` in autocommit mode: for one statement,
        one round trip (no BEGIN / COMMIT)."""
        return self._attempt(lambda conn: fn(Executor(conn, self), *args))

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(executor, *args)`` in one transaction."""

        def body(conn: DBAPIConnection) -> T:
            with self._transaction(conn):
                return fn(Executor(conn, self), *args)

        return self._attempt(body)

    @contextmanager
    def begin(self) -> Iterator[Executor]:
        """A transaction on a connection of its own (no retries)."""
        raw = self.engine.raw_connection()
        try:
            conn: DBAPIConnection = raw.driver_connection  # type: ignore[assignment]
            if not self.sqlite:
                conn.autocommit = True  # type: ignore[union-attr]
            with self._transaction(conn):
                yield Executor(conn, self)
        finally:
            raw.close()

    def migrate(self) -> list[int]:
        """Apply pending migrations (once per process; safe to race); the
        versions this call applied."""
        if self._given is not None:
            engine = self._given
        elif self.sqlite:
            engine = self._create_engine(poolclass=NullPool)
            # the migration holds the file's write lock from its first statement
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            engine = create_engine(self.url, poolclass=NullPool)
        schema = None if self.sqlite else self.schema
        try:
            deadline = time.monotonic() + self.retry_timeout
            while True:
                try:
                    with engine.begin() as conn:
                        mapped = conn.execution_options(schema_translate_map={None: schema})
                        applied = migrate(mapped, self.schema)
                    break
                except DBAPIError as exc:
                    if not _transient(exc.orig or exc):
                        raise
                    if time.monotonic() >= deadline:
                        raise DatabaseUnavailableError(_describe(exc)) from exc
                    time.sleep(0.2)
        finally:
            if engine is not self._given:
                engine.dispose()
        self._migrated = True
        return applied


def _describe(exc: BaseException) -> str:
    # driver messages carry host and port, never the password; keep it short
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return (text_.splitlines() or [type(exc).__name__])[0][:300]


def is_conflict(exc: BaseException) -> bool:
    """A unique-key violation: a checkpoint already recorded."""
    return isinstance(exc, (pg_errors.UniqueViolation, sqlite3.IntegrityError, IntegrityError))


# --- migrations -------------------------------------------------------------


def migrate(conn: Connection, schema: str) -> list[int]:
    """Bring the schema to the latest version under an advisory lock (SQLite:
    the write lock its transaction holds already); the versions applied."""
    if conn.dialect.name != "sqlite":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"dbos_celery:{schema}"))))
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{_quote(schema)}"'))
    s.schema_version.create(conn, checkfirst=True)
    current = schema_version(conn)
    if current > s.LATEST_VERSION:
        raise SchemaVersionError(current, s.LATEST_VERSION)
    applied = list(range(current + 1, s.LATEST_VERSION + 1))
    for version in applied:
        s.MIGRATIONS[version - 1](conn)
        conn.execute(insert(s.schema_version).values(version=version))
        log.info("dbos_celery schema %r migrated to version %d", schema, version)
    return applied


def schema_version(conn: Connection) -> int:
    return int(conn.scalar(select(func.coalesce(func.max(s.schema_version.c.version), 0))) or 0)


def _quote(name: str) -> str:
    if not isinstance(name, str) or not name or '"' in name or "\x00" in name:
        raise ConfigurationError(f"invalid schema name {name!r}")
    return name


# --- workflows --------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowRow:
    id: str
    name: str
    status: str
    inputs: bytes
    output: bytes | None
    error: bytes | None
    executor_id: str | None
    recovery_attempts: int
    parent_id: str | None
    created_at: datetime
    updated_at: datetime
    deadline: datetime | None


@dataclass(frozen=True)
class StepRow:
    seq: int
    name: str
    output: bytes | None
    error: bytes | None


_WORKFLOW_COLS = (
    wf.c.id, wf.c.name, wf.c.status, wf.c.inputs, wf.c.output, wf.c.error,
    wf.c.executor_id, wf.c.recovery_attempts, wf.c.parent_id,
    wf.c.created_at, wf.c.updated_at, wf.c.deadline,
)  # fmt: skip
_NCOLS = len(_WORKFLOW_COLS)


def _when(value: Any) -> Any:
    # SQLite keeps times as epoch seconds
    return datetime.fromtimestamp(value, timezone.utc) if isinstance(value, float) else value


def _workflow(r: Any) -> WorkflowRow:
    return WorkflowRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], _when(r[9]), _when(r[10]),
        _when(r[11]),
    )  # fmt: skip


_WID = bindparam("wid", type_=Text)


# the lease: this row is running (PENDING) under this executor
_HELD = and_(
    wf.c.id == _WID,
    wf.c.executor_id == bindparam("executor", type_=Text),
    wf.c.status == PENDING,
)


def _live_worker(executor_col: Any) -> Any:
    w = s.workers
    return exists(
        select(literal(1)).where(
            w.c.id == executor_col,
            w.c.last_heartbeat > s.now() - s.seconds(bindparam("timeout", type_=Float)),
        )
    )


_INSERT_WORKFLOW = (
    pg_insert(wf)
    .values(
        id=_WID,
        name=bindparam("name", type_=Text),
        status=ENQUEUED,
        inputs=bindparam("inputs", type_=LargeBinary),
        parent_id=bindparam("parent", type_=Text),
        # the earlier of its own timeout and the deadline it inherits (NULLs ignored)
        deadline=s.least(
            s.from_epoch(bindparam("inherit", type_=Float)),
            s.now() + s.seconds(bindparam("timeout", type_=Float)),
        ),
    )
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(wf.c.id)
)


def insert_workflow(
    ex: Executor,
    workflow_id: str,
    name: str,
    inputs: bytes,
    parent_id: str | None,
    timeout: float | None = None,
    inherited_deadline: float | None = None,
) -> bool:
    """Insert an ENQUEUED workflow; False when the id exists already. Its
    deadline is ``timeout`` seconds from now, or the inherited deadline (epoch
    seconds) if earlier; none when both are None."""
    params = {"wid": workflow_id, "name": name, "inputs": inputs, "parent": parent_id,
              "timeout": timeout, "inherit": inherited_deadline}  # fmt: skip
    return ex.first(_INSERT_WORKFLOW, params) is not None


_WORKFLOW_NAME = select(wf.c.name).where(wf.c.id == _WID)


def workflow_name(ex: Executor, workflow_id: str) -> str | None:
    row = ex.first(_WORKFLOW_NAME, {"wid": workflow_id})
    return None if row is None else str(row[0])


_GET_WORKFLOW = select(*_WORKFLOW_COLS).where(wf.c.id == _WID)


def get_workflow(ex: Executor, workflow_id: str) -> WorkflowRow | None:
    row = ex.first(_GET_WORKFLOW, {"wid": workflow_id})
    return _workflow(row) if row is not None else None


_GET_STATUS = select(wf.c.status, wf.c.output, wf.c.error).where(wf.c.id == _WID)


def get_status(ex: Executor, workflow_id: str) -> tuple[str, bytes | None, bytes | None] | None:
    row = ex.first(_GET_STATUS, {"wid": workflow_id})
    return (row[0], row[1], row[2]) if row is not None else None


_EXISTS = select(literal(1)).where(wf.c.id == _WID)


def workflow_exists(ex: Executor, workflow_id: str) -> bool:
    return ex.first(_EXISTS, {"wid": workflow_id}) is not None


def list_workflows(
    ex: Executor,
    *,
    status: str | None = None,
    name: str | None = None,
    parent: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
    newest_first: bool = False,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> list[WorkflowRow]:
    """Created in [created_after, created_before) when given."""
    q = select(*_WORKFLOW_COLS)
    if status is not None:
        q = q.where(wf.c.status == status)
    if name is not None:
        q = q.where(wf.c.name == name)
    if parent is not None:
        q = q.where(wf.c.parent_id == parent)
    if created_after is not None:
        q = q.where(wf.c.created_at >= created_after)
    if created_before is not None:
        q = q.where(wf.c.created_at < created_before)
    order = wf.c.created_at.desc() if newest_first else wf.c.created_at.asc()
    q = q.order_by(order, wf.c.id).limit(limit).offset(offset)
    return [_workflow(r) for r in ex.rows(q, cache=False)]


_ASYNC_COMMIT = select(s.async_commit().label("x")).cte("async_commit")
_CLAIM_UPDATE = (
    update(wf)
    .where(
        wf.c.id == _WID,
        or_(
            wf.c.status == ENQUEUED,
            and_(wf.c.status == PENDING, ~_live_worker(wf.c.executor_id)),
        ),
    )
    .values(
        status=PENDING,
        executor_id=bindparam("executor", type_=Text),
        reserved_by=None,
        updated_at=s.now(),
        recovery_attempts=wf.c.recovery_attempts + case((wf.c.status == PENDING, 1), else_=0),
    )
    .returning(*_WORKFLOW_COLS)
)
_CLAIMED = _CLAIM_UPDATE.cte("claimed")
# The claim may commit asynchronously: if Postgres loses it in a crash, the
# row is back to ENQUEUED (or PENDING under a dead executor), the runner's
# next checkpoint fails its lease check, and the sweep publishes it again.
_CLAIM = (
    select(_CLAIMED, st.c.seq, st.c.name, st.c.output, st.c.error)
    .select_from(
        _CLAIMED.join(_ASYNC_COMMIT, literal_column("true")).outerjoin(
            st, st.c.workflow_id == _CLAIMED.c.id
        )
    )
    .order_by(st.c.seq)
)


def claim_workflow(
    ex: Executor, workflow_id: str, executor_id: str, worker_timeout: float
) -> tuple[WorkflowRow, list[StepRow]] | None:
    """Take the lease on a workflow and read its checkpoints in one round trip.

    Claimable: ENQUEUED, or PENDING under an executor that stopped
    heartbeating (taking it over counts as a recovery). None when another
    live process runs it or it has finished: the caller drops the delivery.
    """
    params = {"wid": workflow_id, "executor": executor_id, "timeout": worker_timeout}
    if ex.sqlite:
        with ex.atomic():
            row = ex.first(_CLAIM_UPDATE, params)
            return None if row is None else (_workflow(row), list_steps(ex, workflow_id))
    rows = ex.rows(_CLAIM, params)
    if not rows:
        return None
    first = _workflow(rows[0])
    steps = [StepRow(*r[_NCOLS:]) for r in rows if r[_NCOLS] is not None]
    return first, steps


_FINISH = (
    update(wf)
    .where(_HELD)
    .values(
        status=bindparam("status", type_=Text),
        output=bindparam("output", type_=LargeBinary),
        error=bindparam("error", type_=LargeBinary),
        updated_at=s.now(),
    )
    .returning(wf.c.parent_id)
)


def finish_workflow(
    ex: Executor,
    workflow_id: str,
    executor_id: str,
    status: str,
    output: bytes | None,
    error: bytes | None,
) -> bool:
    """Record the outcome if this executor still holds the lease."""
    return finish_workflow_parent(ex, workflow_id, executor_id, status, output, error) is not None


def finish_workflow_parent(
    ex: Executor,
    workflow_id: str,
    executor_id: str,
    status: str,
    output: bytes | None,
    error: bytes | None,
) -> tuple[str | None] | None:
    """finish_workflow, returning (parent id,) when it recorded the outcome."""
    params = {"wid": workflow_id, "executor": executor_id, "status": status,
              "output": output, "error": error}  # fmt: skip
    row = ex.first(_FINISH, params)
    return None if row is None else (row[0],)


_RELEASE = update(wf).where(_HELD).values(status=ENQUEUED, executor_id=None, updated_at=s.now())


def release_workflow(ex: Executor, workflow_id: str, executor_id: str) -> bool:
    """Give the lease back (ENQUEUED again) so that a new delivery replays it."""
    return ex.count(_RELEASE, {"wid": workflow_id, "executor": executor_id}) > 0


# --- steps ------------------------------------------------------------------

# a checkpoint is written only while its writer holds the lease: a runner
# whose workflow was taken over stops at its next checkpoint
_INSERT_STEP = (
    insert(st)
    .from_select(
        ["workflow_id", "seq", "name", "output", "error"],
        select(
            bindparam("wid2", type_=Text),
            bindparam("seq", type_=Integer),
            bindparam("name", type_=Text),
            bindparam("output", type_=LargeBinary),
            bindparam("error", type_=LargeBinary),
        ).where(exists(select(literal(1)).where(_HELD))),
    )
    .returning(st.c.seq)
)


def insert_step(
    ex: Executor,
    workflow_id: str,
    seq: int,
    name: str,
    output: bytes | None,
    error: bytes | None,
    executor_id: str,
) -> bool:
    """Write one checkpoint; False when ``executor_id`` no longer holds the
    lease. A checkpoint already at ``seq`` raises a unique violation."""
    params = {"wid": workflow_id, "wid2": workflow_id, "seq": seq, "name": name,
              "output": output, "error": error, "executor": executor_id}  # fmt: skip
    return ex.first(_INSERT_STEP, params) is not None


_LIST_STEPS = (
    select(st.c.seq, st.c.name, st.c.output, st.c.error)
    .where(st.c.workflow_id == _WID)
    .order_by(st.c.seq)
)


def list_steps(ex: Executor, workflow_id: str) -> list[StepRow]:
    return [StepRow(*r) for r in ex.rows(_LIST_STEPS, {"wid": workflow_id})]


# --- messages and events ----------------------------------------------------

_DEST = bindparam("dest", type_=Text)
_DEST_EXISTS = exists(select(literal(1)).where(wf.c.id == _DEST))
_MESSAGE_VALUES = (
    bindparam("dest2", type_=Text),
    bindparam("topic", type_=Text),
    bindparam("payload", type_=LargeBinary),
)
# the destination's status, read by the insert: a WAITING one is woken
_DEST_STATUS = select(wf.c.status).where(wf.c.id == _DEST).scalar_subquery()
_INSERT_MESSAGE = (
    insert(msg)
    .from_select(
        ["destination_id", "topic", "payload"], select(*_MESSAGE_VALUES).where(_DEST_EXISTS)
    )
    .returning(msg.c.id, _DEST_STATUS)
)
_KEY_INSERT = (
    pg_insert(s.send_keys)
    .from_select(
        ["destination_id", "idempotency_key"],
        select(bindparam("dest2", type_=Text), bindparam("key", type_=Text)).where(_DEST_EXISTS),
    )
    .on_conflict_do_nothing()
    .returning(s.send_keys.c.destination_id)
)
_KEY = _KEY_INSERT.cte("k")
_INSERT_KEYED_MESSAGE = (
    insert(msg)
    .from_select(
        ["destination_id", "topic", "payload"],
        select(_KEY.c.destination_id, *_MESSAGE_VALUES[1:]),
    )
    .returning(msg.c.id, _DEST_STATUS)
)


def insert_message(
    ex: Executor,
    destination_id: str,
    topic: str,
    payload: bytes,
    idempotency_key: str | None,
) -> str | None:
    """Store a message for an existing workflow; the destination's status
    (WAITING: parked, to be woken). None when the destination does not exist
    or (with a key) the key was used before; nothing is written then. The
    caller tells the two apart with workflow_exists."""
    params = {"dest": destination_id, "dest2": destination_id, "topic": topic,
              "payload": payload, "key": idempotency_key}  # fmt: skip
    if ex.sqlite and idempotency_key is not None:
        with ex.atomic():
            stored = ex.first(_KEY_INSERT, params) is not None
            row = ex.first(_INSERT_MESSAGE, params) if stored else None
    else:
        stmt = _INSERT_MESSAGE if idempotency_key is None else _INSERT_KEYED_MESSAGE
        row = ex.first(stmt, params)
    return None if row is None else str(row[1] or "")


_OLDEST = (
    select(msg.c.id)
    .where(msg.c.destination_id == _WID, msg.c.topic == bindparam("topic", type_=Text))
    .order_by(msg.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_TAKE = delete(msg).where(msg.c.id == _OLDEST).returning(msg.c.payload)
_TAKEN = _TAKE.cte("taken")
_RECV_CHECKPOINT = insert(st).values(
    workflow_id=bindparam("wid2", type_=Text),
    seq=bindparam("seq", type_=Integer),
    name=bindparam("name", type_=Text),
    output=bindparam("payload", type_=LargeBinary),
)
_CONSUME = (
    insert(st)
    .from_select(
        ["workflow_id", "seq", "name", "output"],
        select(
            bindparam("wid2", type_=Text),
            bindparam("seq", type_=Integer),
            bindparam("name", type_=Text),
            _TAKEN.c.payload,
        ).select_from(_TAKEN.join(_ASYNC_COMMIT, literal_column("true"))),
    )
    .returning(st.c.output)
)


def consume_message(
    ex: Executor, workflow_id: str, topic: str, seq: int, step_name: str
) -> tuple[bytes] | None:
    """Delete the oldest message of (workflow, topic) and write the recv
    checkpoint, in one statement. It commits asynchronously: if the WAL is
    lost both vanish together and the replay takes the same (still oldest)
    message again; any later synchronous commit flushes it first."""
    params = {"wid": workflow_id, "wid2": workflow_id, "topic": topic, "seq": seq,
              "name": step_name}  # fmt: skip
    if ex.sqlite:
        with ex.atomic():
            row = ex.first(_TAKE, params)
            if row is not None:
                ex.count(_RECV_CHECKPOINT, {**params, "payload": row[0]})
    else:
        row = ex.first(_CONSUME, params)
    return (row[0],) if row is not None else None


_UPSERT_EVENT = pg_insert(s.events).values(
    workflow_id=_WID, key=bindparam("key", type_=Text), value=bindparam("value", type_=LargeBinary)
)
_UPSERT_EVENT = _UPSERT_EVENT.on_conflict_do_update(
    index_elements=["workflow_id", "key"],
    set_={"value": _UPSERT_EVENT.excluded.value, "updated_at": s.now()},
)


def upsert_event(ex: Executor, workflow_id: str, key: str, value: bytes) -> None:
    ex.count(_UPSERT_EVENT, {"wid": workflow_id, "key": key, "value": value})


_GET_EVENT = select(s.events.c.value).where(
    s.events.c.workflow_id == _WID, s.events.c.key == bindparam("key", type_=Text)
)


def get_event(ex: Executor, workflow_id: str, key: str) -> tuple[bytes] | None:
    row = ex.first(_GET_EVENT, {"wid": workflow_id, "key": key})
    return (row[0],) if row is not None else None


# --- parking ----------------------------------------------------------------
# A workflow that waits long parks: its row becomes WAITING (no executor) with
# the wakeup key it waits for (wakeup.key form) and a wake time. The sender of
# what it waits for wakes it (wake_waiting); the sweep wakes the rest.

_SEP = "\x1f"  # wakeup.SEP


def _awaited_ready(w: Any) -> Any:
    """True when what the parked row ``w`` waits for exists: an unconsumed
    message ("m"), an event ("e"), a final outcome of a workflow ("d")."""
    target = s.middle_field(w.c.waiting_for, _SEP)
    other = wf.alias("awaited")
    ev = s.events
    return or_(
        exists(
            select(literal(1)).where(
                msg.c.destination_id == w.c.id,
                literal("m" + _SEP, Text) + w.c.id + _SEP + msg.c.topic == w.c.waiting_for,
            )
        ),
        exists(
            select(literal(1)).where(
                ev.c.workflow_id == target,
                literal("e" + _SEP, Text) + ev.c.workflow_id + _SEP + ev.c.key == w.c.waiting_for,
            )
        ),
        exists(
            select(literal(1)).where(
                other.c.id == target,
                literal("d" + _SEP, Text) + other.c.id + _SEP == w.c.waiting_for,
                or_(*(other.c.status == x for x in FINAL_STATUSES)),
            )
        ),
        _calls_settled(w),
    )


_CALL_DISPATCH = "durable.dispatch:"  # DISPATCH_PREFIX (Celery task calls, below)


def _calls_settled(w: Any) -> Any:
    """True when the parked row ``w`` waits for its durable.call outcomes
    ("t") and every call it dispatched has its outcome: a dispatch record
    (seq + 1) with a step at seq. A workflow passes a call only once its
    outcome exists, so the calls without one are those it waits for."""
    dispatched = st.alias("dispatched_call")
    outcome = st.alias("call_outcome")
    return and_(
        literal("t" + _SEP, Text) + w.c.id + _SEP == w.c.waiting_for,
        ~exists(
            select(literal(1)).where(
                dispatched.c.workflow_id == w.c.id,
                dispatched.c.name.startswith(_CALL_DISPATCH, autoescape=True),
                ~exists(
                    select(literal(1)).where(
                        outcome.c.workflow_id == dispatched.c.workflow_id,
                        outcome.c.seq == dispatched.c.seq - 1,
                    )
                ),
            )
        ),
    )


_WAKE_VALUES = {
    "status": ENQUEUED,
    "wake_at": None,
    "waiting_for": None,
    "reserved_by": None,
    "publish_count": 0,
    "updated_at": s.now(),
}
_PARK = (
    update(wf)
    .where(_HELD)
    .values(
        status=WAITING,
        executor_id=None,
        reserved_by=None,
        wake_at=s.from_epoch(bindparam("wake_at", type_=Float)),
        waiting_for=bindparam("waiting_for", type_=Text),
        updated_at=s.now(),
    )
    .returning(_awaited_ready(wf))
)


def park_workflow(
    ex: Executor, workflow_id: str, executor_id: str, wake_at: float | None, waiting_for: str
) -> bool | None:
    """PENDING under ``executor_id`` -> WAITING. None when the executor no
    longer holds the lease (nothing written); else whether what it waits
    for exists already (then the caller rolls the park back)."""
    params = {"wid": workflow_id, "executor": executor_id, "wake_at": wake_at,
              "waiting_for": waiting_for}  # fmt: skip
    row = ex.first(_PARK, params)
    return None if row is None else bool(row[0])


_WAKE = (
    update(wf)
    .where(wf.c.status == WAITING, wf.c.waiting_for == bindparam("key", type_=Text))
    .values(**_WAKE_VALUES)
    .returning(wf.c.id, wf.c.name)
)


def wake_waiting(ex: Executor, waiting_for: str) -> list[tuple[str, str]]:
    """WAITING workflows parked on ``waiting_for`` -> ENQUEUED; (id, name)
    of each, to publish."""
    return [(r[0], r[1]) for r in ex.rows(_WAKE, {"key": waiting_for})]


_WAKE_READY = (
    update(wf)
    .where(wf.c.id == bindparam("wid", type_=Text), wf.c.status == WAITING, _awaited_ready(wf))
    .values(**_WAKE_VALUES)
    .returning(wf.c.id, wf.c.name)
)


def wake_if_ready(ex: Executor, workflow_id: str) -> list[tuple[str, str]]:
    """The workflow, if parked and what it waits for exists now (e.g. all
    its durable.call outcomes) -> ENQUEUED; its (id, name) to publish."""
    return [(r[0], r[1]) for r in ex.rows(_WAKE_READY, {"wid": workflow_id})]


# --- workers and recovery ---------------------------------------------------

_HEARTBEAT = pg_insert(s.workers).values(
    id=bindparam("worker", type_=Text),
    hostname=bindparam("hostname", type_=Text),
    pid=bindparam("pid", type_=Integer),
)
_HEARTBEAT = _HEARTBEAT.on_conflict_do_update(
    index_elements=["id"], set_={"last_heartbeat": s.now()}
)
_RESERVE = (
    update(wf)
    .where(s.in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))), wf.c.status == ENQUEUED)
    .values(reserved_by=bindparam("worker", type_=Text))
)
# messages this live worker received but holds no more (its broker connection
# was reset: Celery drops the prefetched requests); the sweep then treats
# them as never received
_UNRESERVE = (
    update(wf)
    .where(
        s.in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))),
        wf.c.status == ENQUEUED,
        wf.c.reserved_by == bindparam("worker", type_=Text),
    )
    .values(reserved_by=None)
)


# SQLite serves one machine: a worker of another host beat within this window
SHARED_FILE_WINDOW = 60.0
_OTHER_HOST = (
    select(s.workers.c.hostname)
    .where(
        s.workers.c.hostname != bindparam("hostname", type_=Text),
        s.workers.c.last_heartbeat > s.now() - s.seconds(bindparam("window", type_=Float)),
    )
    .limit(1)
)


def heartbeat(
    ex: Executor,
    worker_id: str,
    hostname: str,
    pid: int,
    reserved: list[str],
    dropped: list[str] | None = None,
) -> None:
    """Beat for ``worker_id``; record the workflow messages it received
    (``reserved``) and forget those it received but holds no more
    (``dropped``). On SQLite, refuses (ConfigurationError) when a
    worker of another host beat within SHARED_FILE_WINDOW: one file shared
    by two machines (a network filesystem) has no safe locking."""
    if ex.sqlite:
        other = ex.first(_OTHER_HOST, {"hostname": hostname, "window": SHARED_FILE_WINDOW})
        if other is not None:
            raise ConfigurationError(
                f"this SQLite database is used by workers on {other[0]!r} and {hostname!r}: "
                "SQLite serves one machine; use Postgres (database_url='postgresql://...') "
                "for several"
            )
    ex.count(_HEARTBEAT, {"worker": worker_id, "hostname": hostname, "pid": pid})
    if reserved:
        ex.count(_RESERVE, {"ids": reserved, "worker": worker_id})
    if dropped:
        ex.count(_UNRESERVE, {"ids": dropped, "worker": worker_id})


_DELETE_WORKER = delete(s.workers).where(s.workers.c.id == bindparam("worker", type_=Text))


def delete_worker(ex: Executor, worker_id: str) -> None:
    ex.count(_DELETE_WORKER, {"worker": worker_id})


@dataclass(frozen=True)
class Recovered:
    id: str
    name: str
    status: str


_SWEEP_LOCK = select(s.try_lock(bindparam("lock", type_=Text)))
# a timeout: children inherit the deadline, so they expire in the same pass
_CANCEL_EXPIRED = (
    update(wf)
    .where(
        or_(wf.c.status == ENQUEUED, wf.c.status == PENDING, wf.c.status == WAITING),
        wf.c.deadline <= s.now(),
    )
    .values(status=CANCELLED, wake_at=None, waiting_for=None, updated_at=s.now())
    .returning(wf.c.id, wf.c.name, wf.c.status)
)
_ATTEMPTS = wf.c.recovery_attempts + 1
_RECOVER_DEAD = (
    update(wf)
    .where(wf.c.status == PENDING, ~_live_worker(wf.c.executor_id))
    .values(
        status=case(
            (_ATTEMPTS > bindparam("max_attempts", type_=Integer), MAX_RECOVERY_ATTEMPTS_EXCEEDED),
            else_=ENQUEUED,
        ),
        executor_id=None,
        recovery_attempts=_ATTEMPTS,
        publish_count=0,
        updated_at=s.now(),
    )
    .returning(wf.c.id, wf.c.name, wf.c.status)
)
_RECOVER_PREFETCHED = (
    update(wf)
    .where(wf.c.status == ENQUEUED, wf.c.reserved_by.is_not(None), ~_live_worker(wf.c.reserved_by))
    .values(reserved_by=None, updated_at=s.now())
    .returning(wf.c.id, wf.c.name, wf.c.status)
)
_BACKOFF = s.seconds(bindparam("grace", type_=Float) * s.pow2(s.least(wf.c.publish_count, 10)))
_REPUBLISH_UNRECEIVED = (
    update(wf)
    .where(
        wf.c.status == ENQUEUED,
        wf.c.reserved_by.is_(None),
        wf.c.updated_at < s.now() - _BACKOFF,
    )
    .values(publish_count=wf.c.publish_count + 1, updated_at=s.now())
    .returning(wf.c.id, wf.c.name, wf.c.status)
)
# a publish of the sweep failed (the broker is down): take back the backoff
# step it took, and make the rows due again at the next sweep, so that a
# broker outage does not push their next publish hours away
_FEWER = case((wf.c.publish_count > 0, wf.c.publish_count - 1), else_=0)
_PUBLISH_FAILED = (
    update(wf)
    .where(
        s.in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))),
        wf.c.status == ENQUEUED,
        wf.c.reserved_by.is_(None),
    )
    .values(
        publish_count=_FEWER,
        updated_at=s.now()
        - s.seconds(bindparam("grace", type_=Float) * s.pow2(s.least(_FEWER, 10)) + 1.0),
    )
)


def publish_failed(ex: Executor, workflow_ids: list[str], enqueued_timeout: float) -> None:
    """The sweep could not publish these ENQUEUED workflows: due again now,
    without a step of backoff."""
    ex.count(_PUBLISH_FAILED, {"ids": workflow_ids, "grace": enqueued_timeout})


_WAKE_DUE = (
    update(wf)
    .where(wf.c.status == WAITING, or_(wf.c.wake_at <= s.now(), _awaited_ready(wf)))
    .values(**_WAKE_VALUES)
    .returning(wf.c.id, wf.c.name, literal(WOKEN, Text))
)
_FORGET_WORKERS = delete(s.workers).where(s.workers.c.last_heartbeat < s.now() - s.seconds(86400.0))


def sweep(
    ex: Executor,
    schema: str,
    worker_timeout: float,
    max_recovery_attempts: int,
    enqueued_timeout: float,
) -> list[Recovered] | None:
    """One recovery pass; None when another process holds the sweep lock.

    First cancels the live workflows whose deadline has passed (returned
    with status CANCELLED, so that their waiters can be woken). Then returns
    the workflows to publish again: PENDING ones whose executor
    stopped heartbeating (now ENQUEUED, or MAX_RECOVERY_ATTEMPTS_EXCEEDED),
    parked (WAITING) ones whose wake time passed or whose awaited message,
    event or workflow outcome exists (now ENQUEUED, returned as WOKEN),
    ENQUEUED ones prefetched by a worker that died, and ENQUEUED ones no
    worker has received for a while (published with exponential backoff, so
    a long but healthy queue gets few duplicates).
    """
    if not ex.first(_SWEEP_LOCK, {"lock": f"dbos_celery:{schema}:sweep"})[0]:
        return None
    live = {"timeout": worker_timeout}
    found = [
        *ex.rows(_CANCEL_EXPIRED),
        *ex.rows(_WAKE_DUE),
        *ex.rows(_RECOVER_DEAD, {**live, "max_attempts": max_recovery_attempts}),
        *ex.rows(_RECOVER_PREFETCHED, live),
        *ex.rows(_REPUBLISH_UNRECEIVED, {"grace": enqueued_timeout}),
    ]
    ex.count(_FORGET_WORKERS)  # workers silent for a day
    return [Recovered(*r) for r in found]


# --- management ---------------------------------------------------------------

LIVE_STATUSES = (ENQUEUED, PENDING, WAITING)
RESUMABLE_STATUSES = (CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED)


def _status_in(statuses: tuple[str, ...]) -> Any:
    # not IN (...): an expanding parameter would need every value at compile time
    return or_(*(wf.c.status == x for x in statuses))


_LEASE_STATE = select(wf.c.status, wf.c.executor_id).where(wf.c.id == _WID)


def lease_state(ex: Executor, workflow_id: str) -> tuple[str, str | None] | None:
    """(status, executor_id) of a workflow, or None when it does not exist."""
    row = ex.first(_LEASE_STATE, {"wid": workflow_id})
    return (row[0], row[1]) if row is not None else None


_CANCEL = (
    update(wf)
    .where(wf.c.id == _WID, _status_in(LIVE_STATUSES))
    .values(status=CANCELLED, wake_at=None, waiting_for=None, updated_at=s.now())
    .returning(wf.c.id)
)


def cancel_workflow(ex: Executor, workflow_id: str) -> bool:
    """ENQUEUED, PENDING or WAITING -> CANCELLED; False when it is not live (finished,
    cancelled already, or missing). The executor id stays: a runner learns of
    the cancel when its next checkpoint fails the lease check."""
    return ex.first(_CANCEL, {"wid": workflow_id}) is not None


_EXPIRE_OWN = (
    update(wf)
    .where(
        _HELD,
    )
    .values(status=CANCELLED, updated_at=s.now())
    .returning(wf.c.id)
)
_CANCEL_CHILDREN = (
    update(wf)
    .where(wf.c.parent_id == _WID, _status_in(LIVE_STATUSES))
    .values(status=CANCELLED, wake_at=None, waiting_for=None, updated_at=s.now())
    .returning(wf.c.id)
)


def expire_run(ex: Executor, workflow_id: str, executor_id: str) -> list[str] | None:
    """A runner found its deadline passed: cancel its workflow and that
    workflow's live children; the ids cancelled (its own first). None, and
    nothing written, when ``executor_id`` no longer holds the lease. Run it in
    one transaction."""
    params = {"wid": workflow_id, "executor": executor_id}
    if ex.first(_EXPIRE_OWN, params) is None:
        return None
    return [workflow_id, *(r[0] for r in ex.rows(_CANCEL_CHILDREN, params))]


_RESUME = (
    update(wf)
    .where(wf.c.id == _WID, _status_in(RESUMABLE_STATUSES))
    .values(
        status=ENQUEUED,
        executor_id=None,
        reserved_by=None,
        recovery_attempts=0,
        publish_count=0,
        deadline=None,
        updated_at=s.now(),
    )
    .returning(wf.c.name)
)


def resume_workflow(ex: Executor, workflow_id: str) -> str | None:
    """CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED -> ENQUEUED with a fresh
    recovery count and no deadline; its name, or None when not resumable."""
    row = ex.first(_RESUME, {"wid": workflow_id})
    return None if row is None else str(row[0])


_SOURCE = bindparam("source", type_=Text)
_NEW_ID = bindparam("new_id", type_=Text)
_FORK_WORKFLOW = (
    pg_insert(wf)
    .from_select(
        ["id", "name", "status", "inputs"],
        select(_NEW_ID, wf.c.name, literal(ENQUEUED, Text), wf.c.inputs).where(wf.c.id == _SOURCE),
    )
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(wf.c.name)
)
_FORK_STEPS = insert(st).from_select(
    ["workflow_id", "seq", "name", "output", "error"],
    select(_NEW_ID, st.c.seq, st.c.name, st.c.output, st.c.error).where(
        st.c.workflow_id == _SOURCE, st.c.seq < bindparam("from_step", type_=Integer)
    ),
)
_FORK_EVENTS = insert(s.events).from_select(
    ["workflow_id", "key", "value"],
    select(_NEW_ID, s.events.c.key, s.events.c.value).where(s.events.c.workflow_id == _SOURCE),
)


def fork_workflow(ex: Executor, source_id: str, new_id: str, from_step: int) -> str | None:
    """Insert ``new_id`` as an ENQUEUED copy of ``source_id`` (name, inputs)
    with the checkpoints at seq < ``from_step`` and the events; its name.
    None when ``new_id`` exists already or the source does not: nothing
    written. Run it in one transaction."""
    params = {"new_id": new_id, "source": source_id, "from_step": from_step}
    name = ex.first(_FORK_WORKFLOW, params)
    if name is None:
        return None
    ex.count(_FORK_STEPS, params)
    ex.count(_FORK_EVENTS, params)
    return str(name[0])


_NOT_RUNNING_HERE = select(wf.c.id).where(
    s.in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))),
    or_(
        wf.c.status != PENDING,
        wf.c.executor_id.is_distinct_from(bindparam("executor", type_=Text)),
    ),
)


def not_running_here(ex: Executor, workflow_ids: list[str], executor_id: str) -> list[str]:
    """Those of ``workflow_ids`` that are no longer PENDING under
    ``executor_id``: cancelled, timed out, resumed or taken over."""
    rows = ex.rows(_NOT_RUNNING_HERE, {"ids": workflow_ids, "executor": executor_id})
    return [r[0] for r in rows]


# --- Celery task calls ------------------------------------------------------
# durable.call takes two sequence numbers: the workflow writes the dispatch
# record at seq + 1 (named DISPATCH_PREFIX + task name, holding the Celery
# task id) before it publishes the task; the worker that runs the task marks
# that record with the process running it, then writes the outcome at seq
# (CALL_PREFIX + task name). The task side writes without a lease: only
# where the dispatch record exists, and only once.

CALL_PREFIX = "durable.call:"
DISPATCH_PREFIX = _CALL_DISPATCH
_DISPATCHED = st.alias("dispatched")
_DSEQ = bindparam("dseq", type_=Integer)


@dataclass(frozen=True)
class CallRow:
    """A checkpoint of a durable.call, with its age by the database's clock."""

    seq: int
    name: str
    output: bytes | None
    error: bytes | None
    age: float


_CALL_ROWS = (
    select(
        st.c.seq,
        st.c.name,
        st.c.output,
        st.c.error,
        s.age_seconds(st.c.created_at),
    )
    .where(
        st.c.workflow_id == _WID,
        st.c.seq >= bindparam("lo", type_=Integer),
        st.c.seq < bindparam("hi", type_=Integer),
    )
    .order_by(st.c.seq)
)


def call_rows(ex: Executor, workflow_id: str, lo: int, hi: int) -> list[CallRow]:
    """The checkpoints of a workflow at ``lo <= seq < hi`` (outcomes and
    dispatch records of the calls it waits for), one round trip."""
    rows = ex.rows(_CALL_ROWS, {"wid": workflow_id, "lo": lo, "hi": hi})
    return [CallRow(r[0], r[1], r[2], r[3], float(r[4])) for r in rows]


# the start marker may commit asynchronously: lost in a Postgres crash, the
# call looks not started and is re-dispatched after call_redispatch_after
_CALL_STARTED = (
    update(st)
    .where(
        st.c.workflow_id == _WID,
        st.c.seq == _DSEQ,
        st.c.name.startswith(DISPATCH_PREFIX, autoescape=True),
        _ASYNC_COMMIT.c.x.is_not(None),
    )
    .values(output=bindparam("marker", type_=LargeBinary))
)


def mark_call_started(ex: Executor, workflow_id: str, seq: int, marker: bytes) -> bool:
    """Replace the dispatch record of the call at ``seq`` (kept at seq + 1)
    with ``marker`` (task id and the process running it); False when no such
    record exists (not a call of this database)."""
    return ex.count(_CALL_STARTED, {"wid": workflow_id, "dseq": seq + 1, "marker": marker}) > 0


_CALL_OUTCOME = (
    pg_insert(st)
    .from_select(
        ["workflow_id", "seq", "name", "output", "error"],
        select(
            _DISPATCHED.c.workflow_id,
            _DISPATCHED.c.seq - 1,
            literal(CALL_PREFIX, type_=Text)
            + func.substr(_DISPATCHED.c.name, len(DISPATCH_PREFIX) + 1),
            bindparam("output", type_=LargeBinary),
            bindparam("error", type_=LargeBinary),
        ).where(
            _DISPATCHED.c.workflow_id == _WID,
            _DISPATCHED.c.seq == _DSEQ,
            _DISPATCHED.c.name.startswith(DISPATCH_PREFIX, autoescape=True),
        ),
    )
    .on_conflict_do_nothing(index_elements=["workflow_id", "seq"])
    .returning(st.c.seq)
)


def insert_call_outcome(
    ex: Executor, workflow_id: str, seq: int, output: bytes | None, error: bytes | None
) -> bool:
    """Write the outcome of the call at ``seq``, named after its dispatch
    record. False, writing nothing, when the outcome is there already (a
    duplicate run of the task) or no dispatch record exists."""
    params = {"wid": workflow_id, "dseq": seq + 1, "output": output, "error": error}
    return ex.first(_CALL_OUTCOME, params) is not None


_CALL_OUTCOMES = select(st.c.workflow_id, st.c.seq).where(
    s.in_list(st.c.workflow_id, bindparam("ids", type_=ARRAY(Text))),
    st.c.name.startswith(CALL_PREFIX, autoescape=True),
)


def settled_calls(ex: Executor, calls: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Those of ``calls`` (workflow id, seq) whose outcome is recorded."""
    ids = sorted({w for w, _ in calls})
    return set(calls) & {(r[0], r[1]) for r in ex.rows(_CALL_OUTCOMES, {"ids": ids})}


_LIVE_WORKERS = select(s.workers.c.id).where(
    s.in_list(s.workers.c.id, bindparam("ids", type_=ARRAY(Text))),
    s.workers.c.last_heartbeat > s.now() - s.seconds(bindparam("timeout", type_=Float)),
)


def live_workers(ex: Executor, executor_ids: list[str], worker_timeout: float) -> set[str]:
    """Those of ``executor_ids`` that heartbeated within ``worker_timeout``."""
    rows = ex.rows(_LIVE_WORKERS, {"ids": executor_ids, "timeout": worker_timeout})
    return {r[0] for r in rows}
