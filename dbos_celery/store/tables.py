"""The tables.

Declared without a schema: the engine maps them onto the configured Postgres
schema with ``schema_translate_map`` (SQLite: one file, no schema). Every
change goes through a migration (``migrations.py``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

from .dialect import now

metadata = MetaData()


def _ts(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False, server_default=now())


schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    _ts("applied_at"),
)

_WAITING = text("status = 'WAITING'")
_PENDING = text("status = 'PENDING'")
_ENQUEUED = text("status = 'ENQUEUED'")
_LIVE_DEADLINE = text(
    "deadline IS NOT NULL AND (status = 'ENQUEUED' OR status = 'PENDING' OR status = 'WAITING')"
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("inputs", LargeBinary, nullable=False),
    Column("output", LargeBinary),
    Column("error", LargeBinary),
    # the worker process running it (status PENDING) and the worker that
    # received its Celery message but has not started it yet (prefetch)
    Column("executor_id", Text),
    Column("reserved_by", Text),
    Column("recovery_attempts", Integer, nullable=False, server_default="0"),
    Column("publish_count", Integer, nullable=False, server_default="0"),
    Column("parent_id", Text),
    _ts("created_at"),
    _ts("updated_at"),
    # past it the workflow is cancelled (a timeout); children inherit it (v2)
    Column("deadline", DateTime(timezone=True)),
    # a parked workflow (status WAITING): published again when what it waits
    # for (a wakeup key) arrives, or at wake_at (v3)
    Column("wake_at", DateTime(timezone=True)),
    Column("waiting_for", Text),
    # the Celery queue it runs on, as routed when it started (v4): every
    # publish of it goes there, whichever process publishes
    Column("queue", Text),
    # why the processes that ran it last died in a step (v6): "time_limit:<s>"
    # (Celery's hard time limit) or "died" (killed, out of memory, a crash),
    # and how often in a row; the replay's next step body counts them as its
    # attempts
    Column("killed", Text),
    Column("kills", Integer, nullable=False, server_default="0"),
    # the W3C traceparent of the span that started it (OpenTelemetry), if any
    Column("trace", Text),
    Index("ix_workflows_status_updated", "status", "updated_at"),
    Index("ix_workflows_parent", "parent_id"),
    Index("ix_workflows_created", "created_at"),
    # the parked rows, for the sweep (v3)
    Index("ix_workflows_waiting_wake", "wake_at", postgresql_where=_WAITING, sqlite_where=_WAITING),
    Index(
        "ix_workflows_waiting_for", "waiting_for", postgresql_where=_WAITING, sqlite_where=_WAITING
    ),
    # the parked rows in id order: the sweep looks a page at a time for
    # those whose awaited message, event or outcome exists (v8)
    Index("ix_workflows_waiting_id", "id", postgresql_where=_WAITING, sqlite_where=_WAITING),
    # the running and the prefetched rows by worker: the sweep finds those of
    # dead workers without reading every live row (v9)
    Index(
        "ix_workflows_executor", "executor_id", postgresql_where=_PENDING, sqlite_where=_PENDING
    ),  # fmt: skip
    Index(
        "ix_workflows_reserved_by",
        "reserved_by",
        postgresql_where=_ENQUEUED,
        sqlite_where=_ENQUEUED,
    ),
    # live rows with a deadline: the sweep cancels those past it (v10)
    Index(
        "ix_workflows_live_deadline",
        "deadline",
        postgresql_where=_LIVE_DEADLINE,
        sqlite_where=_LIVE_DEADLINE,
    ),  # fmt: skip
)

steps = Table(
    "steps",
    metadata,
    Column("workflow_id", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("output", LargeBinary),
    Column("error", LargeBinary),
    _ts("created_at"),
    PrimaryKeyConstraint("workflow_id", "seq"),
    # the checkpoints of the last minute, for the steps-per-second metric
    # (v12): BRIN on Postgres (rows arrive in time order; a few kB, next to
    # nothing per insert), a plain index on SQLite
    Index("ix_steps_created", "created_at", postgresql_using="brin"),
)

messages = Table(
    "messages",
    metadata,
    # SQLite: an INTEGER primary key is the rowid (never reused: autoincrement)
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
    Column("destination_id", Text, nullable=False),
    # the default topic is stored as '' (an empty topic name is refused)
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    # the W3C traceparent of the span that sent it (OpenTelemetry), if any
    Column("trace", Text),
    _ts("created_at"),
    Index("ix_messages_mailbox", "destination_id", "topic", "id"),
    sqlite_autoincrement=True,
)

# idempotency keys of sends from outside a workflow; they outlive the
# message itself so that a retry after consumption stores nothing
send_keys = Table(
    "send_keys",
    metadata,
    Column("destination_id", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    _ts("created_at"),
    PrimaryKeyConstraint("destination_id", "idempotency_key"),
)

# one key per send() call without an idempotency key, so that the library's
# own retry of an ambiguous commit stores nothing twice (v7); time-ordered
# ("<epoch ns, 20 digits>-<random>"), pruned by range after CALL_KEY_TTL
call_keys = Table(
    "call_keys",
    metadata,
    Column("key", Text, primary_key=True),
)

events = Table(
    "events",
    metadata,
    Column("workflow_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", LargeBinary, nullable=False),
    _ts("updated_at"),
    PrimaryKeyConstraint("workflow_id", "key"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    _ts("started_at"),
    _ts("last_heartbeat"),
)

# the workflow names each worker process has registered (v5): a row
# ENQUEUED for a name that no live worker knows is reported
worker_workflows = Table(
    "worker_workflows",
    metadata,
    Column("worker_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    PrimaryKeyConstraint("worker_id", "name"),
    Index("ix_worker_workflows_name", "name"),
)
