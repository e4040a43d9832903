"""Writing and replaying checkpoints.

Every durable operation of a workflow takes the next sequence number. On
replay the checkpoint recorded at that number is returned (or its recorded
exception raised) without doing the work again; otherwise the work is done
and its checkpoint committed. A checkpoint is written only while its writer
holds the lease, and a checkpoint recorded already at its number means that
another runner owns the workflow now: both stop the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .cancellation import lease_failed
from .errors import CheckpointConflict, LeaseLostError
from .store import steps

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .serialization import Serializer
    from .services import Services
    from .store.common import StepRow
    from .store.engine import Executor

T = TypeVar("T")


def write_checkpoint(
    ex: Executor,
    ctx: WorkflowContext,
    seq: int,
    name: str,
    output: bytes | None,
    error: bytes | None = None,
) -> None:
    """Write one checkpoint (inside a caller's transaction or alone). A failed
    lease check raises WorkflowCancelledError if the workflow was cancelled,
    else LeaseLostError (the status is read only on that failure)."""
    if not steps.insert_step(ex, ctx.workflow_id, seq, name, output, error, ctx.executor_id):
        raise lease_failed(ex, ctx)


def checkpointed(
    sv: Services,
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
            return sv.store.run(fn, *args)
        return sv.store.now(fn, *args)
    except CheckpointConflict as exc:
        raise LeaseLostError(ctx.workflow_id) from exc


def record(
    sv: Services,
    ctx: WorkflowContext,
    seq: int,
    name: str,
    output: bytes | None,
    error: bytes | None = None,
) -> None:
    """Commit one checkpoint: one INSERT, one round trip."""
    checkpointed(sv, ctx, write_checkpoint, ctx, seq, name, output, error)


def replayed(codec: Serializer, row: StepRow) -> Any:
    """The recorded outcome of a step: its output, or its exception raised."""
    if row.error is not None:
        raise codec.loads_error(row.error)
    return codec.loads(row.output)


def durable_deadline(
    sv: Services, ctx: WorkflowContext, seq: int, name: str, seconds: float
) -> float:
    """The wall-clock deadline of a wait, checkpointed at ``seq`` so that a
    recovered workflow waits only for the time that was left."""
    row = ctx.replay(seq, name)
    if row is not None:
        return float(sv.codec.loads(row.output))
    deadline = time.time() + seconds
    record(sv, ctx, seq, name, sv.codec.dumps(deadline))
    return deadline
