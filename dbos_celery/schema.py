"""Tables, the SQL functions that differ between Postgres and SQLite, and
versioned migrations.

Tables are declared without a schema; ``database.py`` maps them onto the
configured Postgres schema with ``schema_translate_map`` (SQLite: one file,
no schema). Migrations run at start-up inside one transaction holding a
Postgres advisory lock (SQLite: the file's write lock), so twenty workers
starting at once apply each version exactly once.

Time on SQLite is stored as epoch seconds (REAL); the functions below render
``now()``, intervals and the like for each backend, so that every statement
in ``database.py`` is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Boolean, Float

# --- portable SQL functions ---------------------------------------------------

_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class now(FunctionElement[Any]):
    """The transaction's time (Postgres ``now()``; SQLite: epoch seconds)."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "now"


class seconds(FunctionElement[Any]):
    """An interval of ``seconds(x)`` seconds, to add to or subtract from a time."""

    inherit_cache = True
    name = "seconds"


class from_epoch(FunctionElement[Any]):
    """A time from epoch seconds (Postgres ``to_timestamp``)."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "from_epoch"


class age_seconds(FunctionElement[Any]):
    """Seconds from a time to now, as a float."""

    type = Float()
    inherit_cache = True
    name = "age_seconds"


class least(FunctionElement[Any]):
    """The smaller of two values, ignoring NULLs (Postgres ``least``)."""

    inherit_cache = True
    name = "least"


class pow2(FunctionElement[Any]):
    """2 to an integer power up to 62."""

    inherit_cache = True
    name = "pow2"


class middle_field(FunctionElement[Any]):
    """The second ``sep``-separated field of a text (Postgres ``split_part(x, sep, 2)``)."""

    type = Text()
    inherit_cache = True
    name = "middle_field"


class in_list(FunctionElement[Any]):
    """``column`` is one of the list bound to ``param`` (a JSON array on SQLite)."""

    type = Boolean()
    inherit_cache = True
    name = "in_list"


class try_lock(FunctionElement[Any]):
    """Take a transaction-scoped lock named by a text, or report it is taken.
    SQLite needs none: its writers are serialized by the file lock."""

    type = Boolean()
    inherit_cache = True
    name = "try_lock"


class async_commit(FunctionElement[Any]):
    """Let this transaction commit without waiting for the WAL flush
    (Postgres); a no-op value on SQLite, which always syncs."""

    type = Text()
    inherit_cache = True
    name = "async_commit"


def _args(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(a, **kw) for a in element.clauses]


def _render(pg: Callable[..., str], lite: Callable[..., str], cls: type) -> None:
    @compiles(cls)
    def _pg(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
        return pg(*_args(element, compiler, **kw))

    @compiles(cls, "sqlite")
    def _lite(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
        return lite(*_args(element, compiler, **kw))


_render(lambda: "now()", lambda: _SQLITE_NOW, now)
_render(lambda x: f"make_interval(0, 0, 0, 0, 0, 0, {x})", lambda x: f"({x})", seconds)
_render(lambda x: f"to_timestamp({x})", lambda x: f"({x})", from_epoch)
_render(lambda t: f"extract(epoch from now() - {t})", lambda t: f"({_SQLITE_NOW} - {t})",
        age_seconds)  # fmt: skip
_render(lambda a, b: f"least({a}, {b})", lambda a, b: f"coalesce(min({a}, {b}), {a}, {b})", least)
_render(lambda n: f"power(2, {n})", lambda n: f"(1 << {n})", pow2)
_render(
    lambda x, sep: f"split_part({x}, {sep}, 2)",
    lambda x, sep: (
        f"substr(substr({x}, instr({x}, {sep}) + 1), 1, "
        f"instr(substr({x}, instr({x}, {sep}) + 1), {sep}) - 1)"
    ),
    middle_field,
)
_render(lambda c, p: f"{c} = ANY({p})", lambda c, p: f"{c} IN (SELECT value FROM json_each({p}))",
        in_list)  # fmt: skip
_render(lambda x: f"pg_try_advisory_xact_lock(hashtext({x}))", lambda x: "1", try_lock)
_render(lambda: "set_config('synchronous_commit', 'off', true)", lambda: "'off'", async_commit)

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
    Index("ix_workflows_waiting_wake", "wake_at", postgresql_where=_WAITING, sqlite_where=_WAITING),
    Index(
        "ix_workflows_waiting_for", "waiting_for", postgresql_where=_WAITING, sqlite_where=_WAITING
    ),
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
    # SQLite: an INTEGER primary key is the rowid (never reused: autoincrement)
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
    Column("destination_id", Text, nullable=False),
    # the default topic is stored as '' (an empty topic name is refused)
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
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


# index i holds the migration to version i + 1; append, never edit
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3]
LATEST_VERSION = len(MIGRATIONS)
