"""Transaction steps: database writes that happen exactly once.

A ``@durable.transaction()`` step runs its body and writes its checkpoint in
one transaction on the Durable's database (from its
:class:`~dbos_celery.txsource.TransactionSource`). A crash before the commit
leaves nothing (the replay runs the body again); after it, the replay
returns the recorded output; two runners racing both try to write the
checkpoint at the same number and only one commits (the loser's body rolls
back with it). The body reaches the transaction as ``durable.connection``.

A body that raises rolls back, and its error is recorded as a step's would
be (in a transaction of its own); retries (``max_attempts``) each run in a
new transaction. A lost connection is tried again until
``database_retry_timeout``, then the run is handed back (replayed later),
never recorded as the step's outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import context
from .checkpoint import write_checkpoint
from .errors import (
    CheckpointConflict,
    DatabaseUnavailableError,
    LeaseLostError,
    NotInTransactionError,
)
from .loops import backoff
from .step import Step
from .store.engine import Executor, is_transient, is_unique_violation

if TYPE_CHECKING:
    from .services import Services
    from .txsource import TransactionSource

P = ParamSpec("P")
R = TypeVar("R")

_connection: ContextVar[Any] = ContextVar("dbos_celery_connection", default=None)


def current_connection() -> Any:
    """The connection of the transaction step running in this context."""
    conn = _connection.get()
    if conn is None:
        raise NotInTransactionError()
    return conn


class _Unavailable(BaseException):
    """Carries DatabaseUnavailableError past the step's error handling: the
    database being away is not the step's outcome."""

    def __init__(self, error: DatabaseUnavailableError) -> None:
        super().__init__(error)
        self.error = error


class TransactionStep(Step[P, R]):
    """A step whose body and checkpoint commit together."""

    def __init__(
        self, sv: Services, source: TransactionSource, fn: Callable[P, R], name: str,
        max_attempts: int, interval: float, backoff: float,
        retry_on: tuple[type[BaseException], ...],
    ) -> None:  # fmt: skip
        super().__init__(sv, fn, name, max_attempts, interval, backoff, retry_on)
        self.source = source

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return super().__call__(*args, **kwargs)
        except _Unavailable as exc:
            raise exc.error from exc.error.__cause__

    @contextmanager
    def _transaction(self) -> Iterator[Executor]:
        """A transaction with the body's connection set; a lost connection
        tried again (a new transaction) until database_retry_timeout."""
        with self.source.transaction() as (handle, raw):
            token = _connection.set(handle)
            try:
                yield Executor(raw, self.sv.store)
            finally:
                _connection.reset(token)

    def _plain(self, args: Any, kwargs: Any) -> R:
        """Outside a workflow: the body in a transaction, nothing recorded."""
        return self._retrying(lambda: self._in_transaction(None, 0, args, kwargs))

    def _once(self, ctx: context.WorkflowContext, seq: int, args: Any, kwargs: Any) -> R:
        return self._retrying(lambda: self._in_transaction(ctx, seq, args, kwargs))

    def _in_transaction(
        self, ctx: context.WorkflowContext | None, seq: int, args: Any, kwargs: Any
    ) -> R:
        with self._transaction() as ex:
            output = self.fn(*args, **kwargs)
            if ctx is not None:
                data = self.sv.codec.dumps(output, f"output of step {self.name!r}")
                try:
                    write_checkpoint(ex, ctx, seq, self.name, data)
                except Exception as exc:
                    if not is_unique_violation(exc):
                        raise
                    # recorded already: another runner's commit won (or ours,
                    # whose reply was lost); this body's writes roll back
                    raise LeaseLostError(ctx.workflow_id) from CheckpointConflict()
        return output

    def _retrying(self, attempt: Callable[[], R]) -> R:
        deadline = time.monotonic() + self.sv.settings.database_retry_timeout
        delays = backoff(0.05, 1.0)
        while True:
            try:
                return attempt()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if time.monotonic() >= deadline:
                    error = DatabaseUnavailableError(str(exc).splitlines()[0][:300] or repr(exc))
                    error.__cause__ = exc
                    raise _Unavailable(error) from exc
            time.sleep(next(delays))

    def _done(
        self, ctx: context.WorkflowContext, seq: int, output: R, killed: tuple[str, int] | None
    ) -> None:
        self._forget_deaths(ctx, killed)  # the checkpoint committed with the body
