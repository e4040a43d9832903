"""Writing and replaying checkpoints.

Every durable operation of a workflow takes the next sequence number. On
replay the checkpoint recorded at that number is returned (or its recorded
exception raised) without doing the work again; otherwise the work is done
and its checkpoint committed. A checkpoint is written only while its writer
holds the lease, and a checkpoint recorded already at its number means that
another runner owns the workflow now: both stop the run.

The checkpoint of a step with ``defer_checkpoint`` is held, not written,
when the step returns: it goes in the same statement as the workflow's next
durable write (a send, a child's start, the final status...), which saves a
commit; it is written alone before another step's body runs or the workflow
waits. A crash while it is held runs the step again, as a crash just before
its commit would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .cancellation import lease_failed
from .errors import CheckpointConflict, LeaseLostError
from .store import steps
from .store.common import StepRow

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .serialization import Serializer
    from .services import Services
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
    """Write one checkpoint, and the held one with it (inside a caller's
    transaction or alone: one statement either way). A failed lease check
    raises WorkflowCancelledError if the workflow was cancelled, else
    LeaseLostError (the status is read only on that failure)."""
    _write(ex, ctx, [StepRow(seq, name, output, error)])


def _write(ex: Executor, ctx: WorkflowContext, rows: list[StepRow]) -> None:
    # never changes ``rows``: a retried transaction calls this again with them
    if ctx.held is not None:
        rows = [ctx.held, *rows]
        ctx.held_sent = True  # cleared once the write committed (checkpointed)
    if rows and not steps.insert_steps(ex, ctx.workflow_id, rows, ctx.executor_id):
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
    workflow now: stop with LeaseLostError (nothing was written). A held
    checkpoint that went with the write is forgotten once it committed."""
    ctx.held_sent = False
    try:
        if transaction:
            out = sv.store.run(fn, *args)
        else:
            out = sv.store.now(fn, *args)
    except CheckpointConflict as exc:
        raise LeaseLostError(ctx.workflow_id) from exc
    if ctx.held_sent:
        ctx.held, ctx.held_sent = None, False
    return out


def record(
    sv: Services,
    ctx: WorkflowContext,
    seq: int,
    name: str,
    output: bytes | None,
    error: bytes | None = None,
) -> None:
    """Commit one checkpoint (and the held one): one statement, one round trip."""
    checkpointed(sv, ctx, write_checkpoint, ctx, seq, name, output, error)


def hold(ctx: WorkflowContext, seq: int, name: str, output: bytes | None,
         error: bytes | None) -> None:  # fmt: skip
    """Keep a step's checkpoint to write with the workflow's next durable
    write or its final status, saving a commit. A crash before then runs the
    step again, as one before its commit would (steps are at-least-once);
    ``flush`` bounds the time it is held."""
    assert ctx.held is None, "a held checkpoint is written before the next step runs"
    ctx.held = StepRow(seq, name, output, error)


def flush(sv: Services, ctx: WorkflowContext) -> None:
    """Write the held checkpoint now, alone: before another step's body runs
    and before the workflow waits, so that a step's work is at stake only
    while the workflow's own code runs."""
    if ctx.held is not None:
        checkpointed(sv, ctx, _write, ctx, [])


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
