"""Versioned migrations.

They run at start-up inside one transaction holding a Postgres advisory lock
(SQLite: the file's write lock), so twenty workers starting at once apply
each version exactly once; a database newer than this code is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import DDL, func, insert, select, text
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError, SchemaVersionError
from ..keys import migration_lock
from .tables import call_keys, messages, metadata, steps, worker_workflows, workflows
from .tables import schema_version as schema_version_table

log = logging.getLogger("dbos_celery")


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)


def _sqlite(conn: Connection) -> bool:
    # SQLite databases start at the current tables (v1 is create_all), so
    # the column additions below have nothing to do there
    return conn.dialect.name == "sqlite"


def _v2(conn: Connection) -> None:
    """Workflow deadlines. A database made by a newer v1 (create_all of the
    current tables) has the column already, hence IF NOT EXISTS."""
    if _sqlite(conn):
        return
    conn.execute(
        DDL(  # type: ignore[no-untyped-call]
            "ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS deadline TIMESTAMP WITH TIME ZONE"
        ).against(workflows)
    )


def _v3(conn: Connection) -> None:
    """Parking: the wake-up deadline and awaited key of WAITING workflows,
    and partial indexes that keep the sweep over them cheap."""
    columns = (
        "ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS wake_at TIMESTAMP WITH TIME ZONE",
        "ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS waiting_for TEXT",
    )
    for ddl in () if _sqlite(conn) else columns:
        conn.execute(DDL(ddl).against(workflows))  # type: ignore[no-untyped-call]
    for index in workflows.indexes:
        if index.name in ("ix_workflows_waiting_wake", "ix_workflows_waiting_for"):
            index.create(conn, checkfirst=True)


def _v4(conn: Connection) -> None:
    """The queue a workflow runs on."""
    if _sqlite(conn):
        return
    conn.execute(
        DDL("ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS queue TEXT").against(workflows)  # type: ignore[no-untyped-call]
    )


def _v5(conn: Connection) -> None:
    """The workflow names each worker has registered."""
    worker_workflows.create(conn, checkfirst=True)


def _v6(conn: Connection) -> None:
    """Why (and how often) the processes running a workflow died in a step."""
    if _sqlite(conn):
        return
    for column in ("killed TEXT", "kills INTEGER NOT NULL DEFAULT 0"):
        conn.execute(
            DDL(f"ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS {column}").against(workflows)  # type: ignore[no-untyped-call]
        )


def _v7(conn: Connection) -> None:
    """The keys of send() calls, against the library's own retries."""
    call_keys.create(conn, checkfirst=True)


def _v8(conn: Connection) -> None:
    """The parked rows in id order, for the sweep's pages of readiness checks."""
    for index in workflows.indexes:
        if index.name == "ix_workflows_waiting_id":
            index.create(conn, checkfirst=True)


def _v9(conn: Connection) -> None:
    """The running and the prefetched rows by worker, for the sweep."""
    for index in workflows.indexes:
        if index.name in ("ix_workflows_executor", "ix_workflows_reserved_by"):
            index.create(conn, checkfirst=True)


def _v10(conn: Connection) -> None:
    """The live rows with a deadline, for the sweep."""
    for index in workflows.indexes:
        if index.name == "ix_workflows_live_deadline":
            index.create(conn, checkfirst=True)


def _v11(conn: Connection) -> None:
    """The trace context of a workflow's start and of a message's send."""
    if _sqlite(conn):
        return
    for table in (workflows, messages):
        conn.execute(
            DDL("ALTER TABLE %(fullname)s ADD COLUMN IF NOT EXISTS trace TEXT").against(table)  # type: ignore[no-untyped-call]
        )


def _v12(conn: Connection) -> None:
    """The checkpoints by time, for the steps-per-second metric."""
    for index in steps.indexes:
        if index.name == "ix_steps_created":
            index.create(conn, checkfirst=True)


# index i holds the migration to version i + 1; append, never edit
MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10, _v11, _v12,
]  # fmt: skip
LATEST_VERSION = len(MIGRATIONS)


def migrate(conn: Connection, schema: str) -> list[int]:
    """Bring the schema to the latest version under an advisory lock (SQLite:
    the write lock its transaction holds already); the versions applied."""
    if conn.dialect.name != "sqlite":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(migration_lock(schema)))))
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{quote(schema)}"'))
    schema_version_table.create(conn, checkfirst=True)
    current = schema_version(conn)
    if current > LATEST_VERSION:
        raise SchemaVersionError(current, LATEST_VERSION)
    applied = list(range(current + 1, LATEST_VERSION + 1))
    for version in applied:
        MIGRATIONS[version - 1](conn)
        conn.execute(insert(schema_version_table).values(version=version))
        log.info("dbos_celery schema %r migrated to version %d", schema, version)
    return applied


def schema_version(conn: Connection) -> int:
    return int(conn.scalar(select(func.coalesce(func.max(schema_version_table.c.version), 0))) or 0)


def quote(name: str) -> str:
    if not isinstance(name, str) or not name or '"' in name or "\x00" in name:
        raise ConfigurationError(f"invalid schema name {name!r}")
    return name
