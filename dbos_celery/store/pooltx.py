"""The default transaction of a ``@durable.transaction()`` step: one on a
connection of the Durable's own pool, handed to the step's body as a
SQLAlchemy ``Connection`` (the checkpoint is written on its driver
connection, in the same transaction). The pool is the store's at the time
(``Durable.using`` may point the Durable at another database)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .engine import Database, DBAPIConnection


class PoolTransactions:
    """A :class:`dbos_celery.txsource.TransactionSource` on the store's pool."""

    def __init__(self, store: Callable[[], Database]) -> None:
        self.store = store  # the Durable's store now

    @contextmanager
    def transaction(self) -> Iterator[tuple[Any, DBAPIConnection]]:
        with self.store().engine.connect() as conn:
            raw: DBAPIConnection = conn.connection.driver_connection  # type: ignore[assignment]
            if isinstance(raw, sqlite3.Connection):
                # the driver begins nothing by itself (isolation_level None)
                with conn.begin():
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    yield conn, raw
                return
            # the pool's own connections are in autocommit mode: this one
            # begins (at its first statement) and SQLAlchemy commits it
            was = raw.autocommit
            raw.autocommit = False
            try:
                with conn.begin():
                    yield conn, raw
            finally:
                if not raw.closed:
                    raw.autocommit = was
