"""Transaction steps on Django's connection: the ORM's writes in a
``@durable.transaction()`` step and the step's checkpoint commit together."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connections, transaction  # type: ignore[import-untyped]

from ...errors import ConfigurationError
from ...store.engine import DBAPIConnection


class DjangoTransactions:
    """The ``TransactionSource`` (``dbos_celery.txsource``) of Django's
    database ``alias``: each attempt of a transaction step runs in
    ``transaction.atomic(using=alias)``, and the checkpoint is written on
    that connection's driver connection, inside the same transaction. The
    step's body reaches the Django connection as ``durable.connection``;
    the ORM (``Model.objects``, ``connections[alias].cursor()``) is already
    in the transaction."""

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias

    def __repr__(self) -> str:
        return f"DjangoTransactions({self.alias!r})"

    @contextmanager
    def transaction(self) -> Iterator[tuple[Any, DBAPIConnection]]:
        """A ``transaction.atomic(using=alias)`` block on the calling
        thread's Django connection: yields that connection (what
        ``durable.connection`` is in the step) and its driver connection (where
        the checkpoint is written). Commits when the block ends, rolls back
        if it raises.

        Raises:
            ConfigurationError: the connection's driver is neither psycopg 3
                nor sqlite3.
        """
        with transaction.atomic(using=self.alias):
            conn = connections[self.alias]
            conn.ensure_connection()
            yield conn, driver_connection(conn)


def driver_connection(conn: Any) -> DBAPIConnection:
    """The driver connection under a Django connection: psycopg 3 or sqlite3,
    the drivers dbos_celery writes through."""
    raw = conn.connection
    if isinstance(raw, (psycopg.Connection, sqlite3.Connection)):
        return raw
    kind = f"{type(raw).__module__}.{type(raw).__qualname__}"
    raise ConfigurationError(
        f"Django's database {conn.alias!r} is connected through {kind}: dbos_celery writes "
        "its checkpoints through psycopg 3 or sqlite3 (install psycopg 3, which Django's "
        "postgresql backend prefers to psycopg2)"
    )
