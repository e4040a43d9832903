"""Where a transaction step's transaction comes from.

A ``@durable.transaction()`` step runs its body and writes its checkpoint in
one transaction on the Durable's database. By default that transaction is on
a connection of the Durable's own pool and the step sees it as a SQLAlchemy
``Connection`` (``durable.connection``; ``store/pooltx.py``). A framework with its own connection
handling (Django: ``dbos_celery.contrib.django``) passes a source of its own
to ``Durable(transactions=...)``, so that the ORM's writes in the step go
through the same transaction.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from .store.engine import DBAPIConnection


class TransactionSource(Protocol):
    """Opens the transaction of one attempt of a transaction step."""

    def transaction(self) -> AbstractContextManager[tuple[Any, DBAPIConnection]]:
        """Begin a transaction and yield ``(handle, driver connection)``:
        the handle is what the step's body gets as ``durable.connection``,
        the driver connection (psycopg 3, or sqlite3 for the embedded file)
        is where the checkpoint is written, inside that same transaction.
        Commit when the block ends normally; roll back when it raises."""
        ...
