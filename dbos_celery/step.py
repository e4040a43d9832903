"""Running a step: retries, checkpoints, replay.

Inside a workflow a step takes the next sequence number. On replay the
recorded output is returned (or the recorded exception raised) without
running the step. Otherwise it runs, with retries, and its outcome is
committed before the call returns. A step interrupted before its checkpoint
commits may run again: steps are at-least-once until they commit.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import cancellation, context
from . import database as db
from .errors import InvalidArgumentError, LeaseLostError, MaxStepAttemptsError, SerializationError

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .durable import Durable

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
log = logging.getLogger("dbos_celery")


def write_checkpoint(
    ex: db.Executor,
    ctx: WorkflowContext,
    seq: int,
    name: str,
    output: bytes | None,
    error: bytes | None = None,
) -> None:
    """Write one checkpoint (inside a caller's transaction or alone). A failed
    lease check raises WorkflowCancelledError if the workflow was cancelled,
    else LeaseLostError (the status is read only on that failure)."""
    if not db.insert_step(ex, ctx.workflow_id, seq, name, output, error, ctx.executor_id):
        raise cancellation.lease_failed(ex, ctx)


def checkpointed(
    durable: Durable,
    ctx: WorkflowContext,
    fn: Callable[..., T],
    *args: Any,
    transaction: bool = False,
) -> T:
    """Run ``fn(executor, *args)`` that writes checkpoints: alone in autocommit
    mode, or as one transaction. A checkpoint already recorded at its sequence
    number, or a lease held by someone else, means another runner owns this
    workflow now: stop with LeaseLostError (nothing was written)."""
    try:
        if transaction:
            return durable.db.run(fn, *args)
        return durable.db.now(fn, *args)
    except Exception as exc:
        if db.is_conflict(exc):
            raise LeaseLostError(ctx.workflow_id) from exc
        raise


def record(
    durable: Durable,
    ctx: WorkflowContext,
    seq: int,
    name: str,
    output: bytes | None,
    error: bytes | None = None,
) -> None:
    """Commit one checkpoint: one INSERT, one round trip."""
    checkpointed(durable, ctx, write_checkpoint, ctx, seq, name, output, error)


def replayed(durable: Durable, row: db.StepRow) -> Any:
    """The recorded outcome of a step: its output, or its exception raised."""
    if row.error is not None:
        raise durable.serializer.loads_error(row.error)
    return durable.serializer.loads(row.output)


def durable_deadline(
    durable: Durable, ctx: WorkflowContext, seq: int, name: str, seconds: float
) -> float:
    """The wall-clock deadline of a wait, checkpointed at ``seq`` so that a
    recovered workflow waits only for the time that was left."""
    row = ctx.replay(seq, name)
    if row is not None:
        return float(durable.serializer.loads(row.output))
    deadline = time.time() + seconds
    record(durable, ctx, seq, name, durable.serializer.dumps(deadline))
    return deadline


class Step(Generic[P, R]):
    """A function whose outcome is checkpointed when called in a workflow."""

    def __init__(
        self,
        durable: Durable,
        fn: Callable[P, R],
        name: str,
        max_attempts: int,
        interval: float,
        backoff: float,
        retry_on: tuple[type[BaseException], ...],
    ) -> None:
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if interval < 0 or backoff < 1:
            raise InvalidArgumentError("interval must be >= 0 and backoff >= 1")
        self.durable = durable
        self.fn = fn
        self.name = name
        self.max_attempts = max_attempts
        self.interval = interval
        self.backoff = backoff
        self.retry_on = retry_on
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = context.current()
        if ctx is None or ctx.in_step:
            return self.fn(*args, **kwargs)  # outside a workflow: a plain call
        durable = self.durable
        seq = ctx.next_seq()
        row = ctx.replay(seq, self.name)
        if row is not None:
            return replayed(durable, row)  # type: ignore[no-any-return]
        cancellation.check(durable, ctx)  # in memory unless a cancel was hinted
        ctx.in_step = True
        try:
            output = self._attempts(ctx.workflow_id, args, kwargs)
        except Exception as exc:
            ctx.in_step = False
            record(durable, ctx, seq, self.name, None, durable.serializer.dumps_error(exc))
            raise
        finally:
            ctx.in_step = False
        try:
            data = durable.serializer.dumps(output, f"output of step {self.name!r}")
        except SerializationError as exc:
            record(durable, ctx, seq, self.name, None, durable.serializer.dumps_error(exc))
            raise
        record(durable, ctx, seq, self.name, data)
        return output

    def _attempts(self, workflow_id: str, args: Any, kwargs: Any) -> R:
        delay = self.interval
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.fn(*args, **kwargs)
            except self.retry_on as exc:
                if self.max_attempts == 1:
                    raise
                if attempt == self.max_attempts:
                    raise MaxStepAttemptsError(self.name, attempt, repr(exc)) from exc
                log.info(
                    "step %s failed (attempt %d of %d: %r); retrying in %.2f s",
                    self.name, attempt, self.max_attempts, exc, delay,
                    extra={"workflow_id": workflow_id},
                )  # fmt: skip
                time.sleep(delay)
                delay *= self.backoff
        raise AssertionError("unreachable")
