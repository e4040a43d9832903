"""The connection pool of one process, transactions, retries and SQLite glue.

Statements are written with SQLAlchemy Core and built once, at import, with
named bind parameters; each is compiled to SQL once per schema and run on the
driver's connection directly (statement building and SQLAlchemy's execution
layer cost more than the round trip they wrap). Each statement is a small
function taking an :class:`Executor`, in the module of its table group.

Two backends: Postgres through psycopg 3 (production), and a SQLite file
(the embedded default: one machine, its processes serialized by the file's
write lock). Functions that differ between them are in ``dialect.py``; the
few Postgres statements that modify rows inside a CTE run as two statements
in one transaction on SQLite (``Executor.atomic``).

``Database.now`` runs one statement in autocommit mode (one round trip);
``Database.run`` runs several in one transaction. Lost connections (SQLite:
a lock held too long) are retried with backoff for a bounded time, then
surface as :class:`DatabaseUnavailableError` with the driver error as
``__cause__``; a unique violation (a checkpoint recorded already) surfaces
as :class:`CheckpointConflict`. Nothing outside the store imports
SQLAlchemy or a driver.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import ExecStatus
from sqlalchemy import Engine, NullPool, create_engine, event

__all__ = [
    "DBAPIConnection",
    "Database",
    "Engine",
    "Executor",
    "check_database_url",
    "is_engine",
]
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from ..errors import (
    CheckpointConflict,
    ConfigurationError,
    DatabaseUnavailableError,
)
from ..loops import backoff
from . import migrations
from .migrations import quote

log = logging.getLogger("dbos_celery")
T = TypeVar("T")


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
        if self.sqlite:
            return cur.fetchall() if cur.description is not None else []
        # not cur.description: it builds a Column per column, every time
        result = cur.pgresult
        rows = result is not None and result.status == ExecStatus.TUPLES_OK
        return cur.fetchall() if rows else []

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


# Bounds on what one of the library's Postgres sessions can hold, so that a
# frozen or partitioned process (SIGSTOP, a VM pause, a lost network) blocks
# nobody for long: Postgres ends a session idle inside a transaction after
# IDLE_IN_TRANSACTION (releasing its row locks and the sweep's advisory
# lock), a statement waits at most LOCK_TIMEOUT for a lock (then it is
# retried), and TCP keepalives find a dead peer in about 25 s instead of
# the kernel's two hours. (A caller's own engine keeps its settings.)
IDLE_IN_TRANSACTION = "5s"
LOCK_TIMEOUT = "5s"
SESSION_BOUNDS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION} "
    f"-c lock_timeout={LOCK_TIMEOUT}",
}


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
        url: str | Callable[[], str] | None = None,
        *,
        engine: Engine | None = None,
        schema: str = "dbos_celery",
        retry_timeout: float = 10.0,
        pool_size: int = 5,
    ) -> None:
        if (url is None) == (engine is None):
            raise ConfigurationError("pass exactly one of database_url or engine")
        if engine is not None and engine.dialect.driver != "psycopg":
            raise ConfigurationError(
                "a caller's engine must use psycopg 3 (postgresql+psycopg://), "
                f"not {engine.dialect.driver!r}"
            )
        quote(schema)
        # a URL given as a function is read at first use, in each process
        self._source = url if callable(url) else None
        self._resolved_in = 0
        if not callable(url):
            self._configure(make_url(url) if url is not None else engine.url)  # type: ignore[union-attr]
        self.schema = schema
        self.retry_timeout = retry_timeout
        self.pool_size = pool_size
        self._given = engine
        self._engine: Engine | None = None
        self._pid = 0
        self._sql: dict[int, tuple[str, dict[str, Any]]] = {}
        self._migrated = False
        self.auto_migrate = True

    def with_options(self, *, schema: str, retry_timeout: float) -> Database:
        """A Database on the same database (URL, URL function or caller's
        engine) with this schema and retry timeout (nothing connects)."""
        url: str | Callable[[], str] | None = self._source
        if url is None and self._given is None:
            url = self._url.render_as_string(hide_password=False)
        return Database(url, engine=self._given, schema=schema, retry_timeout=retry_timeout,
                        pool_size=self.pool_size)  # fmt: skip

    def _configure(self, sa_url: URL) -> None:
        backend = sa_url.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"database_url must be a postgresql:// or sqlite:/// URL, got {backend!r}"
            )
        self._sqlite = backend == "sqlite"
        if self._sqlite:
            if not sa_url.database or sa_url.database == ":memory:":
                raise ConfigurationError(
                    "database_url: SQLite needs a file (sqlite:///path/to/file.db): an in-memory "
                    "database is not shared between worker processes"
                )
            # absolute: a worker that changes directory still finds it
            path = os.path.abspath(sa_url.database)
            self._url = sa_url.set(drivername="sqlite+pysqlite", database=path)
        else:
            self._url = sa_url.set(drivername="postgresql+psycopg")

    def _resolve(self) -> None:
        """Read a URL given as a function: at first use, and again in a
        forked child (whose settings may name another database)."""
        if self._source is None or self._resolved_in == os.getpid():
            return
        url = self._source()
        if not isinstance(url, str):
            raise ConfigurationError(f"database_url() must return a str URL, got {url!r}")
        check_database_url(url)
        self._configure(make_url(url))
        self._resolved_in = os.getpid()

    @property
    def url(self) -> URL:
        """The database's URL (with the driver this library uses)."""
        self._resolve()
        return self._url

    @property
    def sqlite(self) -> bool:
        """Whether the database is a SQLite file (else Postgres)."""
        self._resolve()
        return self._sqlite

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
                connect_args={"autocommit": True, **SESSION_BOUNDS}, **pool,
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

    def connection_info(self) -> dict[str, Any]:
        """How another process (the beater, which imports only the driver)
        connects: a SQLite file's path, or a libpq URI with the library's
        session bounds."""
        url = self._given.url if self._given is not None else self.url
        if self.sqlite:
            return {"sqlite": True, "path": url.database}
        uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return {"sqlite": False, "conninfo": uri, "bounds": SESSION_BOUNDS}

    def compiled(self, stmt: ClauseElement, cache: bool = True) -> tuple[str, dict[str, Any]]:
        key = id(stmt)
        got = self._sql.get(key) if cache else None
        if got is not None:
            return got
        if self.sqlite and self.engine.dialect.default_schema_name is None:
            self.engine.connect().close()  # the dialect learns its schema name
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
        delays = backoff(0.05, 1.0)
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
                except _UNIQUE as exc:
                    raise CheckpointConflict() from exc
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
            time.sleep(next(delays))

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

    def joined(self, conn: DBAPIConnection) -> Executor:
        """An executor on a caller's driver connection, in whatever
        transaction it has open (no retries: a lost connection is the
        caller's to handle). The schema is migrated first, on a connection
        of our own."""
        if not self._migrated and self.auto_migrate:
            self.migrate()
        return Executor(conn, self)

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
            delays = backoff(0.2, 0.2)
            while True:
                try:
                    with engine.begin() as conn:
                        mapped = conn.execution_options(schema_translate_map={None: schema})
                        applied = migrations.migrate(mapped, self.schema)
                    break
                except DBAPIError as exc:
                    if not _transient(exc.orig or exc):
                        raise
                    if time.monotonic() >= deadline:
                        raise DatabaseUnavailableError(_describe(exc)) from exc
                    time.sleep(next(delays))
        finally:
            if engine is not self._given:
                engine.dispose()
        self._migrated = True
        return applied


def _describe(exc: BaseException) -> str:
    # driver messages carry host and port, never the password; keep it short
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return (text_.splitlines() or [type(exc).__name__])[0][:300]


# a unique-key violation: a checkpoint recorded already at its sequence number
_UNIQUE = (pg_errors.UniqueViolation, sqlite3.IntegrityError, IntegrityError)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """An error and the driver errors it wraps (SQLAlchemy's ``orig``, a
    framework's ``__cause__``)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return
        yield seen
        seen = getattr(seen, "orig", None) or seen.__cause__


def is_transient(exc: BaseException) -> bool:
    """A lost connection or a busy SQLite file, however wrapped."""
    return any(_transient(e) for e in _causes(exc))


def is_unique_violation(exc: BaseException) -> bool:
    """A unique-key violation, however wrapped."""
    return any(isinstance(e, _UNIQUE) for e in _causes(exc))


def check_database_url(url: str) -> None:
    """Refuse a malformed database URL before anything connects."""
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigurationError("database_url is not a valid URL") from None


def is_engine(value: object) -> bool:
    """Whether ``value`` is a SQLAlchemy Engine (a caller's, to share)."""
    return isinstance(value, Engine)
