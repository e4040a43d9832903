"""A caller's open transaction, for ``start`` and ``send`` with ``connection=``.

The workflow row (or the message) is written on the caller's own connection,
inside whatever transaction it has open, so that it commits or rolls back
with the caller's business write. Accepted: a SQLAlchemy ``Connection`` or
``Session``, a psycopg 3 ``Connection``, and Django's ``connection`` or
``connections[alias]``, each on the same Postgres database as the Durable.
What must wait for the commit (the Celery message that runs the workflow,
the wakeup of a recv) is for ``dbos_celery.aftercommit``, kicked by the
commit hook the library offers, if any (Django's ``on_commit``, a Session's
``after_commit``). A connection with no transaction open (autocommit)
commits the write at once.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from ..errors import DatabaseUnavailableError, InvalidArgumentError
from .common import database_identity
from .engine import Database

T = TypeVar("T")
Hook = Callable[[Callable[[], None]], None]


@dataclass(frozen=True)
class CallerTransaction:
    """Where to write (the caller's psycopg connection), how to hear of the
    commit (``hook`` registers a function to call after it; None: no hook),
    and whether the write commits at once (no transaction is open)."""

    conn: psycopg.Connection[Any]
    hook: Hook | None
    autocommit: bool


def _refuse(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"connection=: {what}")


def _sqlalchemy(connection: Any) -> tuple[psycopg.Connection[Any], Hook | None] | None:
    """A SQLAlchemy Connection or Session (begun if it had no transaction,
    as its next statement would begin one); None if it is neither."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy import event
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    hook: Hook | None = None
    if isinstance(connection, Session):
        session = connection

        def hook(fn: Callable[[], None]) -> None:
            event.listen(session, "after_commit", lambda _s: fn(), once=True)

        connection = session.connection()
    elif not isinstance(connection, Connection):
        return None
    elif not connection.in_transaction():
        connection.begin()  # what its next statement would do (autobegin)
    raw = connection.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise _refuse(
            f"a SQLAlchemy connection through {connection.dialect.driver!r}; it must use "
            "psycopg 3 (postgresql+psycopg://) on the Durable's Postgres database"
        )
    return raw, hook


def _django(connection: Any) -> tuple[psycopg.Connection[Any], Hook | None] | None:
    """Django's ``connection`` / ``connections[alias]``; None if not one."""
    if "django.db" not in sys.modules:
        return None
    from django.db import connections  # type: ignore[import-untyped]
    from django.db.backends.base.base import BaseDatabaseWrapper  # type: ignore[import-untyped]
    from django.utils.connection import ConnectionProxy  # type: ignore[import-untyped]

    if isinstance(connection, ConnectionProxy):  # django.db.connection
        connection = connections[connection.alias]
    if not isinstance(connection, BaseDatabaseWrapper):
        return None
    if connection.vendor != "postgresql":
        raise _refuse(f"a Django {connection.vendor!r} database; it must be Postgres")
    if connection.needs_rollback:
        raise _refuse("the Django atomic block is marked for rollback after an error")
    connection.ensure_connection()
    raw = connection.connection
    if not isinstance(raw, psycopg.Connection):
        raise _refuse(
            "Django's Postgres backend runs on psycopg2 here; it must run on psycopg 3 "
            "(install psycopg, which Django 4.2+ prefers)"
        )
    return raw, connection.on_commit


# the database identity seen on each caller connection, and each store's own
_seen: weakref.WeakKeyDictionary[psycopg.Connection[Any], tuple[Any, ...]] = (
    weakref.WeakKeyDictionary()
)
_ours: weakref.WeakKeyDictionary[Database, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _identity(store: Database, fresh: bool = False) -> tuple[Any, ...]:
    """The store's database identity (read again with ``fresh``: the server
    may have restarted since)."""
    if fresh or store not in _ours:
        _ours[store] = store.now(database_identity)
    return _ours[store]


def transaction_of(store: Database, connection: Any) -> CallerTransaction:
    """The caller's transaction behind ``connection``; InvalidArgumentError,
    before anything is written, for anything else."""
    if store.sqlite:
        raise _refuse(
            "the Durable is on the embedded SQLite file; writing in a caller's transaction "
            "needs the Durable on Postgres (start or send after your commit instead)"
        )
    got = _sqlalchemy(connection)
    if got is None:
        got = _django(connection)
    if got is None:
        if not isinstance(connection, psycopg.Connection):
            raise _refuse(
                "expected a SQLAlchemy Connection or Session, a psycopg 3 Connection or a "
                f"Django connection, got {type(connection).__name__}"
            )
        got = connection, None
    raw, hook = got
    if raw.closed:
        raise _refuse("the connection is closed")
    status = raw.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise _refuse("its transaction failed and must be rolled back")
    if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
        raise _refuse(f"the connection is busy ({status.name})")
    theirs = _seen.get(raw)
    if theirs is None:
        theirs = _seen[raw] = tuple(_run(store, raw, database_identity))
    if theirs != _identity(store) and theirs != _identity(store, fresh=True):
        raise _refuse(
            "it is connected to another database than the Durable's (both must be the "
            "same Postgres database)"
        )
    # psycopg begins a transaction by itself unless in autocommit mode
    autocommit = raw.autocommit and status == TransactionStatus.IDLE
    return CallerTransaction(raw, hook, autocommit)


def _run(store: Database, conn: psycopg.Connection[Any], fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(store.joined(conn), *args)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"the caller's connection failed: {exc}") from exc


def write(tx: CallerTransaction, store: Database, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(executor, *args)`` in the caller's transaction."""
    return _run(store, tx.conn, fn, *args)
