"""Every SQL statement dbos_celery runs, the engine, and transactions.

Each statement is a small function taking a ``Connection``. Nothing else in
the package imports SQLAlchemy. Driver errors are translated here: a lost
connection is retried with backoff for a bounded time and then surfaces as
:class:`DatabaseUnavailableError`, keeping the driver error as ``__cause__``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
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
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

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
MAX_RECOVERY_ATTEMPTS_EXCEEDED = "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
FINAL_STATUSES = (SUCCESS, ERROR, CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED)

wf = s.workflows
st = s.steps
msg = s.messages


class Database:
    """Owns the engine of one process (re-created after a fork) and runs
    transactions with bounded retries on lost connections."""

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
        if url is not None:
            backend = make_url(url).get_backend_name()
            if backend != "postgresql":
                raise ConfigurationError(f"database_url must be a postgresql URL, got {backend!r}")
        self.url = url
        self.schema = schema
        self.retry_timeout = retry_timeout
        self.pool_size = pool_size
        self._given = engine
        self._engine: Engine | None = None
        self._pid = 0
        self._migrated = False
        self.auto_migrate = True

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None and self._given is None:
                # inherited across fork: drop the parent's sockets untouched
                self._engine.dispose(close=False)
            base = self._given
            if base is None:
                assert self.url is not None
                url = make_url(self.url)
                if url.drivername == "postgresql":
                    url = url.set(drivername="postgresql+psycopg")
                base = create_engine(
                    url,
                    pool_size=self.pool_size,
                    max_overflow=50,
                    pool_recycle=3600,
                )
            self._engine = base.execution_options(schema_translate_map={None: self.schema})
            self._pid = os.getpid()
        return self._engine

    def dispose(self) -> None:
        """Close the engine this object created (never a caller's engine)."""
        if self._engine is not None and self._given is None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction; retry lost connections
        with backoff for up to ``retry_timeout`` seconds."""
        if not self._migrated and self.auto_migrate:
            self.migrate()
        return self._run(fn, *args)

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.05
        while True:
            try:
                with self.engine.begin() as conn:
                    return fn(conn, *args)
            except DBAPIError as exc:
                if not _is_disconnect(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise DatabaseUnavailableError(_describe(exc)) from exc
                log.warning("database connection lost (%s); retrying", _describe(exc))
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def migrate(self) -> None:
        """Apply pending migrations (once per process; safe to race)."""
        self._run(migrate, self.schema)
        self._migrated = True


def _is_disconnect(exc: DBAPIError) -> bool:
    return bool(exc.connection_invalidated) or isinstance(exc, OperationalError)


def _describe(exc: BaseException) -> str:
    # driver messages carry host and port, never the password; keep it short
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0][:300]


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, IntegrityError)


# --- migrations -------------------------------------------------------------


def migrate(conn: Connection, schema: str) -> None:
    """Bring the schema to the latest version under an advisory lock."""
    conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"dbos_celery:{schema}"))))
    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{_quote(schema)}"'))
    s.schema_version.create(conn, checkfirst=True)
    current = conn.scalar(select(func.coalesce(func.max(s.schema_version.c.version), 0)))
    assert current is not None
    if current > s.LATEST_VERSION:
        raise SchemaVersionError(current, s.LATEST_VERSION)
    for version in range(current + 1, s.LATEST_VERSION + 1):
        s.MIGRATIONS[version - 1](conn)
        conn.execute(insert(s.schema_version).values(version=version))
        log.info("dbos_celery schema %r migrated to version %d", schema, version)


def schema_version(conn: Connection) -> int:
    return int(conn.scalar(select(func.coalesce(func.max(s.schema_version.c.version), 0))) or 0)


def _quote(name: str) -> str:
    if not name or '"' in name or "\x00" in name:
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


@dataclass(frozen=True)
class StepRow:
    seq: int
    name: str
    output: bytes | None
    error: bytes | None


def insert_workflow(
    conn: Connection, workflow_id: str, name: str, inputs: bytes, parent_id: str | None
) -> bool:
    """Insert an ENQUEUED workflow; False when the id exists already."""
    stmt = (
        pg_insert(wf)
        .values(id=workflow_id, name=name, status=ENQUEUED, inputs=inputs, parent_id=parent_id)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(wf.c.id)
    )
    return conn.execute(stmt).first() is not None


def workflow_name(conn: Connection, workflow_id: str) -> str | None:
    return conn.scalar(select(wf.c.name).where(wf.c.id == workflow_id))


def get_workflow(conn: Connection, workflow_id: str) -> WorkflowRow | None:
    row = conn.execute(select(*_workflow_cols()).where(wf.c.id == workflow_id)).first()
    return WorkflowRow(*row) if row is not None else None


def _workflow_cols() -> list[Any]:
    return [
        wf.c.id, wf.c.name, wf.c.status, wf.c.inputs, wf.c.output, wf.c.error,
        wf.c.executor_id, wf.c.recovery_attempts, wf.c.parent_id,
        wf.c.created_at, wf.c.updated_at,
    ]  # fmt: skip


def get_status(conn: Connection, workflow_id: str) -> tuple[str, bytes | None, bytes | None] | None:
    row = conn.execute(
        select(wf.c.status, wf.c.output, wf.c.error).where(wf.c.id == workflow_id)
    ).first()
    return (row[0], row[1], row[2]) if row is not None else None


def list_workflows(
    conn: Connection,
    *,
    status: str | None = None,
    name: str | None = None,
    parent: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
    newest_first: bool = False,
) -> list[WorkflowRow]:
    q = select(*_workflow_cols())
    if status is not None:
        q = q.where(wf.c.status == status)
    if name is not None:
        q = q.where(wf.c.name == name)
    if parent is not None:
        q = q.where(wf.c.parent_id == parent)
    order = wf.c.created_at.desc() if newest_first else wf.c.created_at.asc()
    q = q.order_by(order, wf.c.id).limit(limit).offset(offset)
    return [WorkflowRow(*r) for r in conn.execute(q)]


def _seconds(value: Any) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


def _live_worker(executor_col: Any) -> Any:
    w = s.workers
    return exists(
        select(literal(1)).where(
            w.c.id == executor_col,
            w.c.last_heartbeat
            > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, bindparam("timeout")),
        )
    )


def claim_workflow(
    conn: Connection, workflow_id: str, executor_id: str, worker_timeout: float
) -> tuple[WorkflowRow, list[StepRow]] | None:
    """Take the lease on a workflow and read its checkpoints in one round trip.

    Claimable: ENQUEUED, or PENDING under an executor that stopped
    heartbeating (taking it over counts as a recovery). None when another
    live process runs it or it has finished: the caller drops the delivery.
    """
    claimed = (
        update(wf)
        .where(
            wf.c.id == workflow_id,
            or_(
                wf.c.status == ENQUEUED,
                and_(wf.c.status == PENDING, ~_live_worker(wf.c.executor_id)),
            ),
        )
        .values(
            status=PENDING,
            executor_id=executor_id,
            reserved_by=None,
            updated_at=func.now(),
            recovery_attempts=wf.c.recovery_attempts + case((wf.c.status == PENDING, 1), else_=0),
        )
        .returning(*_workflow_cols())
        .cte("claimed")
    )
    q = (
        select(claimed, st.c.seq, st.c.name, st.c.output, st.c.error)
        .select_from(claimed.outerjoin(st, st.c.workflow_id == claimed.c.id))
        .order_by(st.c.seq)
    )
    rows = conn.execute(q, {"timeout": worker_timeout}).all()
    if not rows:
        return None
    first = WorkflowRow(*rows[0][:11])
    steps = [StepRow(*r[11:]) for r in rows if r[11] is not None]
    return first, steps


def finish_workflow(
    conn: Connection,
    workflow_id: str,
    executor_id: str,
    status: str,
    output: bytes | None,
    error: bytes | None,
) -> bool:
    """Record the outcome if this executor still holds the lease."""
    res = conn.execute(
        update(wf)
        .where(wf.c.id == workflow_id, wf.c.executor_id == executor_id, wf.c.status == PENDING)
        .values(status=status, output=output, error=error, updated_at=func.now())
    )
    return bool(res.rowcount)


def release_workflow(conn: Connection, workflow_id: str, executor_id: str) -> bool:
    """Give the lease back (ENQUEUED again) so that a new delivery replays it."""
    res = conn.execute(
        update(wf)
        .where(wf.c.id == workflow_id, wf.c.executor_id == executor_id, wf.c.status == PENDING)
        .values(status=ENQUEUED, executor_id=None, updated_at=func.now())
    )
    return bool(res.rowcount)


# --- steps ------------------------------------------------------------------


def insert_step(
    conn: Connection,
    workflow_id: str,
    seq: int,
    name: str,
    output: bytes | None,
    error: bytes | None,
) -> None:
    conn.execute(
        insert(st).values(workflow_id=workflow_id, seq=seq, name=name, output=output, error=error)
    )


def list_steps(conn: Connection, workflow_id: str) -> list[StepRow]:
    q = select(st.c.seq, st.c.name, st.c.output, st.c.error).where(st.c.workflow_id == workflow_id)
    return [StepRow(*r) for r in conn.execute(q.order_by(st.c.seq))]


# --- messages and events ----------------------------------------------------


def workflow_exists(conn: Connection, workflow_id: str) -> bool:
    return conn.execute(select(literal(1)).where(wf.c.id == workflow_id)).first() is not None


def insert_message(
    conn: Connection,
    destination_id: str,
    topic: str,
    payload: bytes,
    idempotency_key: str | None,
) -> bool:
    """Store a message for an existing workflow. False when the destination
    does not exist or (with a key) the key was used before; nothing is
    written then. The caller tells the two apart with workflow_exists."""
    dest_exists = exists(select(literal(1)).where(wf.c.id == destination_id))
    if idempotency_key is None:
        src = select(
            literal(destination_id).label("d"),
            literal(topic).label("t"),
            literal(payload).label("p"),
        ).where(dest_exists)
    else:
        key = (
            pg_insert(s.send_keys)
            .from_select(
                ["destination_id", "idempotency_key"],
                select(literal(destination_id), literal(idempotency_key)).where(dest_exists),
            )
            .on_conflict_do_nothing()
            .returning(s.send_keys.c.destination_id)
            .cte("k")
        )
        src = select(key.c.destination_id, literal(topic), literal(payload))
    stmt = insert(msg).from_select(["destination_id", "topic", "payload"], src).returning(msg.c.id)
    return conn.execute(stmt).first() is not None


def consume_message(
    conn: Connection, workflow_id: str, topic: str, seq: int, step_name: str
) -> tuple[bytes] | None:
    """Delete the oldest message of (workflow, topic) and write the recv
    checkpoint, in one statement. The transaction commits asynchronously:
    if the WAL is lost both vanish together and the replay takes the same
    (still oldest) message again."""
    oldest = (
        select(msg.c.id)
        .where(msg.c.destination_id == workflow_id, msg.c.topic == topic)
        .order_by(msg.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    taken = delete(msg).where(msg.c.id == oldest).returning(msg.c.payload).cte("taken")
    async_commit = select(func.set_config("synchronous_commit", "off", True).label("x")).cte(
        "async_commit"
    )
    stmt = (
        insert(st)
        .from_select(
            ["workflow_id", "seq", "name", "output"],
            select(
                literal(workflow_id), literal(seq), literal(step_name), taken.c.payload
            ).select_from(taken.join(async_commit, literal_column("true"))),
        )
        .returning(st.c.output)
    )
    row = conn.execute(stmt).first()
    return (row[0],) if row is not None else None


def count_messages(conn: Connection, destination_id: str, topic: str | None = None) -> int:
    q = select(func.count()).select_from(msg).where(msg.c.destination_id == destination_id)
    if topic is not None:
        q = q.where(msg.c.topic == topic)
    return int(conn.scalar(q) or 0)


def upsert_event(conn: Connection, workflow_id: str, key: str, value: bytes) -> None:
    stmt = pg_insert(s.events).values(workflow_id=workflow_id, key=key, value=value)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["workflow_id", "key"],
            set_={"value": stmt.excluded.value, "updated_at": func.now()},
        )
    )


def get_event(conn: Connection, workflow_id: str, key: str) -> tuple[bytes] | None:
    row = conn.execute(
        select(s.events.c.value).where(s.events.c.workflow_id == workflow_id, s.events.c.key == key)
    ).first()
    return (row[0],) if row is not None else None


# --- workers and recovery ---------------------------------------------------


def heartbeat(
    conn: Connection, worker_id: str, hostname: str, pid: int, reserved: Sequence[str]
) -> None:
    stmt = pg_insert(s.workers).values(id=worker_id, hostname=hostname, pid=pid)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=["id"], set_={"last_heartbeat": func.now()})
    )
    if reserved:
        conn.execute(
            update(wf)
            .where(wf.c.id.in_(list(reserved)), wf.c.status == ENQUEUED)
            .values(reserved_by=worker_id)
        )


def delete_worker(conn: Connection, worker_id: str) -> None:
    conn.execute(delete(s.workers).where(s.workers.c.id == worker_id))


@dataclass(frozen=True)
class Recovered:
    id: str
    name: str
    status: str


def sweep(
    conn: Connection,
    schema: str,
    worker_timeout: float,
    max_recovery_attempts: int,
    enqueued_timeout: float,
) -> list[Recovered] | None:
    """One recovery pass; None when another process holds the sweep lock.

    Returns the workflows to publish again: PENDING ones whose executor
    stopped heartbeating (now ENQUEUED, or MAX_RECOVERY_ATTEMPTS_EXCEEDED),
    ENQUEUED ones prefetched by a worker that died, and ENQUEUED ones no
    worker has received for a while (published with exponential backoff, so
    a long but healthy queue gets few duplicates).
    """
    got = conn.scalar(
        select(func.pg_try_advisory_xact_lock(func.hashtext(f"dbos_celery:{schema}:sweep")))
    )
    if not got:
        return None
    params = {"timeout": worker_timeout}
    attempts = wf.c.recovery_attempts + 1
    dead = conn.execute(
        update(wf)
        .where(wf.c.status == PENDING, ~_live_worker(wf.c.executor_id))
        .values(
            status=case(
                (attempts > max_recovery_attempts, MAX_RECOVERY_ATTEMPTS_EXCEEDED),
                else_=ENQUEUED,
            ),
            executor_id=None,
            recovery_attempts=attempts,
            publish_count=0,
            updated_at=func.now(),
        )
        .returning(wf.c.id, wf.c.name, wf.c.status),
        params,
    ).all()
    prefetched = conn.execute(
        update(wf)
        .where(
            wf.c.status == ENQUEUED,
            wf.c.reserved_by.is_not(None),
            ~_live_worker(wf.c.reserved_by),
        )
        .values(reserved_by=None, updated_at=func.now())
        .returning(wf.c.id, wf.c.name, wf.c.status),
        params,
    ).all()
    backoff = _seconds(bindparam("grace") * func.power(2, func.least(wf.c.publish_count, 10)))
    unreceived = conn.execute(
        update(wf)
        .where(
            wf.c.status == ENQUEUED,
            wf.c.reserved_by.is_(None),
            wf.c.updated_at < func.now() - backoff,
        )
        .values(publish_count=wf.c.publish_count + 1, updated_at=func.now())
        .returning(wf.c.id, wf.c.name, wf.c.status),
        {"grace": enqueued_timeout},
    ).all()
    # forget workers that have been silent for a day
    conn.execute(
        delete(s.workers).where(s.workers.c.last_heartbeat < func.now() - text("interval '1 day'"))
    )
    return [Recovered(*r) for r in (*dead, *prefetched, *unreceived)]
