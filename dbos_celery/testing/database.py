"""Throwaway databases for tests: a SQLite file, or a fresh Postgres schema.

A :class:`TestDatabase` names where one test's workflows live: a database
URL and a schema. On SQLite it is a file of its own (in pytest's
``tmp_path``); on Postgres a schema of its own, named ``dbos_test_<hex>``,
in the database you give, and dropped (with everything in it) when the test
ends. The tables are made by the Durable that uses it, on first use or by
``durable.migrate()``, as in production.

Only the schema's creation and removal are SQL of this module's own; they
run on a short psycopg connection of their own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from celery import Celery

    from ..durable import Durable

# the prefix of every schema made here: ``DROP SCHEMA`` whatever an
# interrupted run (a killed pytest) left behind
SCHEMA_PREFIX = "dbos_test_"
_POSTGRES = re.compile(r"^postgres(ql)?(\+\w+)?://")


@dataclass(frozen=True)
class TestDatabase:
    """Where one test's workflows, checkpoints and messages live."""

    __test__ = False  # a helper, not a test class for pytest to collect

    url: str  # a SQLAlchemy URL, as Durable(database_url=...) takes it
    schema: str  # the Postgres schema; on SQLite, the prefix of Redis channels only
    backend: str  # "sqlite" or "postgres"

    def durable(self, app: Celery, **options: Any) -> Durable:
        """A new Durable for ``app`` on this database (close it after use)."""
        from ..durable import Durable

        return Durable(app, self.url, schema=self.schema, **options)

    def exists(self) -> bool:
        """Whether the schema (Postgres) or the file (SQLite) exists."""
        if self.backend == "sqlite":
            return Path(self.path).exists()
        with _connect(self.url) as conn:
            found = conn.execute(
                "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (self.schema,)
            ).fetchone()
        return found is not None

    @property
    def path(self) -> str:
        """The SQLite file's path."""
        return self.url.split(":///", 1)[1]

    def drop(self) -> None:
        """Remove the schema with its tables (Postgres), or the file (SQLite)."""
        if self.backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            return
        with _connect(self.url) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def is_postgres_url(url: str) -> bool:
    return _POSTGRES.match(url) is not None


def new_schema_name() -> str:
    return f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:12]}"


def sqlite_database(directory: Path | str) -> TestDatabase:
    """A SQLite file in ``directory`` (made on first use)."""
    schema = new_schema_name()
    path = Path(directory).resolve() / f"{schema}.sqlite"
    return TestDatabase(f"sqlite:///{path}", schema, "sqlite")


@contextmanager
def postgres_database(url: str) -> Iterator[TestDatabase]:
    """A fresh schema in the Postgres database at ``url``, dropped with
    everything in it when the block ends."""
    if not is_postgres_url(url):
        raise ConfigurationError(
            f"a test database URL must be postgresql://...; got {url.split(':', 1)[0]!r}"
        )
    db = TestDatabase(url, new_schema_name(), "postgres")
    with _connect(url) as conn:
        conn.execute(f'CREATE SCHEMA "{db.schema}"')
    try:
        yield db
    finally:
        db.drop()


def _connect(url: str) -> psycopg.Connection[Any]:
    # libpq takes postgresql://, without SQLAlchemy's +driver suffix
    conninfo = _POSTGRES.sub("postgresql://", url, count=1)
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
