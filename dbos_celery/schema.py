"""Tables and versioned migrations.

Tables are declared without a schema; ``database.py`` maps them onto the
configured schema with ``schema_translate_map``. Migrations run at start-up
inside one transaction holding a Postgres advisory lock, so twenty workers
starting at once apply each version exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    DDL,
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
    func,
    text,
)
from sqlalchemy.engine import Connection

metadata = MetaData()


def _ts(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False, server_default=func.now())


schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    _ts("applied_at"),
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
    Index("ix_workflows_status_updated", "status", "updated_at"),
    Index("ix_workflows_parent", "parent_id"),
    Index("ix_workflows_created", "created_at"),
    # the parked rows, for the sweep (v3)
    Index("ix_workflows_waiting_wake", "wake_at", postgresql_where=text("status = 'WAITING'")),
    Index("ix_workflows_waiting_for", "waiting_for", postgresql_where=text("status = 'WAITING'")),
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
)

messages = Table(
    "messages",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("destination_id", Text, nullable=False),
    # the default topic is stored as '' (an empty topic name is refused)
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    _ts("created_at"),
    Index("ix_messages_mailbox", "destination_id", "topic", "id"),
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


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)


def _v2(conn: Connection) -> None:
    """Workflow deadlines. A database made by a newer v1 (create_all of the
    current tables) has the column already, hence IF NOT EXISTS."""
    conn.execute(
        DDL(  # type: ignore[no-untyped-call]
            "ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS deadline TIMESTAMP WITH TIME ZONE"
        ).against(workflows)
    )


def _v3(conn: Connection) -> None:
    """Parking: the wake-up deadline and awaited key of WAITING workflows,
    and partial indexes that keep the sweep over them cheap."""
    for ddl in (
        "ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS wake_at TIMESTAMP WITH TIME ZONE",
        "ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS waiting_for TEXT",
    ):
        conn.execute(DDL(ddl).against(workflows))  # type: ignore[no-untyped-call]
    for index in workflows.indexes:
        if index.name in ("ix_workflows_waiting_wake", "ix_workflows_waiting_for"):
            index.create(conn, checkfirst=True)


# index i holds the migration to version i + 1; append, never edit
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3]
LATEST_VERSION = len(MIGRATIONS)
