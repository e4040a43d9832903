"""Running (or replaying) one workflow: the body of its Celery task.

The worker claims the row (the lease) and reads every recorded checkpoint
in one round trip, then runs the function; each durable call inside it
replays from those checkpoints until it reaches new ground. A delivery that
finds the workflow running elsewhere or finished is a duplicate: it returns
at once and the broker message is acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import cancellation, context, parking, tracing
from .context import WorkflowContext
from .errors import (
    DatabaseUnavailableError,
    LeaseLostError,
    WorkflowCancelledError,
    WorkflowNotRegisteredError,
)
from .keys import done_key
from .status import Status
from .store import workflows

if TYPE_CHECKING:
    from .recovery.heartbeat import ProcessRuntime
    from .services import Services
    from .store.common import StepRow, WorkflowRow
    from .workflow import Workflow

log = logging.getLogger("dbos_celery")


class _Outcome:
    """What a run ends with: a final status to record, or nothing (None)."""

    __slots__ = ("status", "output", "error")

    def __init__(
        self, status: Status, output: bytes | None = None, error: bytes | None = None
    ) -> None:
        self.status = status
        self.output = output
        self.error = error


def execute(
    sv: Services,
    workflow_id: str,
    registry: Mapping[str, Workflow[Any, Any]],
    time_limit: float | None = None,
) -> None:
    """Claim and run (or replay) one workflow, found by name in ``registry``.
    ``time_limit``: seconds from now after which Celery ends the run (the
    task's soft or hard time limit); its waits park before it."""
    started = time.monotonic()
    runtime = sv.runtime()
    runtime.start()
    executor = runtime.executor_id
    try:
        claimed = sv.store.now(
            workflows.claim_workflow, workflow_id, executor, sv.settings.worker_timeout
        )
    except DatabaseUnavailableError as exc:
        # the claim may have committed before the connection dropped: then
        # only this live process could give the lease back
        _hand_back(runtime, workflow_id, exc)
        return
    if claimed is None:
        log.info("workflow %s is running elsewhere or finished; delivery dropped",
                 workflow_id, extra={"workflow_id": workflow_id})  # fmt: skip
        return
    row, steps = claimed
    if row.recovery_attempts > sv.settings.max_recovery_attempts:
        sv.store.now(workflows.finish_workflow, workflow_id, executor,
                     Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED, None, None)  # fmt: skip
        sv.notifier.notify(done_key(workflow_id))
        return
    wf = registry.get(row.name)
    if wf is None:
        sv.store.now(workflows.release_workflow, workflow_id, executor)
        raise WorkflowNotRegisteredError(row.name)
    ctx = WorkflowContext(workflow_id, executor, {s.seq: s for s in steps}, epoch=runtime.epoch)
    if row.deadline is not None:
        ctx.deadline = row.deadline.timestamp()
    if row.killed is not None:
        ctx.killed = (row.killed, row.kills)
    if time_limit is not None:
        ctx.park_by = started + time_limit - time_limit_margin(time_limit)
    attributes = {tracing.WORKFLOW_ID: workflow_id, "dbos_celery.workflow_name": row.name,
                  "dbos_celery.recovery_attempts": row.recovery_attempts,
                  "dbos_celery.checkpoints": len(steps)}  # fmt: skip
    with tracing.span(f"dbos_celery.workflow {row.name}", attributes, row.trace) as span:
        outcome = _run(sv, runtime, ctx, row, wf.fn)
        if span is not None:
            span.set_attribute("dbos_celery.outcome", outcome.status if outcome else "unfinished")
        if outcome is not None:
            _finish(sv, runtime, row, outcome, ctx.held)


def time_limit_margin(limit: float) -> float:
    """How long before a time limit a wait parks: a quarter of it, at least
    0.5 s and at most 2 s (a park is one short transaction)."""
    return min(2.0, max(0.5, 0.25 * limit))


def _run(
    sv: Services,
    runtime: ProcessRuntime,
    ctx: WorkflowContext,
    row: WorkflowRow,
    fn: Callable[..., Any],
) -> _Outcome | None:
    """Run the function in the workflow's context; its outcome, or None when
    the run ends without one (parked, cancelled, lease lost, database gone)."""
    wid = ctx.workflow_id
    token = context.enter(ctx)
    runtime.track(ctx)
    try:
        cancellation.check(sv, ctx)  # a deadline that passed while it was queued
        inputs = sv.codec.loads(row.inputs)
        result = fn(*inputs["args"], **inputs["kwargs"])
        return _Outcome(Status.SUCCESS, sv.codec.dumps(result, f"output of workflow {row.name!r}"))
    except parking.Parked:
        log.debug("workflow %s parked; its slot is free", wid, extra={"workflow_id": wid})
    except WorkflowCancelledError:
        # the status is CANCELLED already (set by the canceller or the timeout)
        log.info("workflow %s was cancelled; stopped", wid, extra={"workflow_id": wid})
    except LeaseLostError:
        # Either another runner owns it now (the release is a no-op), or our
        # own commit landed before its connection dropped and the retry hit
        # the checkpoint it wrote: then replay it at once from a new delivery.
        runtime.hand_back(wid)
        log.warning("workflow %s: checkpoint conflict; replaying from its checkpoints",
                    wid, extra={"workflow_id": wid})  # fmt: skip
    except DatabaseUnavailableError as exc:
        # Not the workflow's outcome: the database stayed away longer than
        # database_retry_timeout. Every checkpoint that committed is kept;
        # give the lease back once the database answers, and replay.
        _hand_back(runtime, wid, exc)
    except Exception as exc:
        log.info("workflow %s failed: %r", wid, exc, extra={"workflow_id": wid})
        return _Outcome(Status.ERROR, error=sv.codec.dumps_error(exc))
    finally:
        runtime.untrack(ctx)
        context.leave(token)
    return None


def _finish(
    sv: Services, runtime: ProcessRuntime, row: WorkflowRow, outcome: _Outcome,
    held: StepRow | None,
) -> None:  # fmt: skip
    """Record the outcome under the lease, with the last step's held
    checkpoint; wake its waiters and a parent parked on it."""
    wid = row.id
    try:
        # a lost answer retried finds the status final: the lease check
        # fails and the held checkpoint is not inserted again
        finished = sv.store.now(workflows.finish_workflow, wid, runtime.executor_id,
                                outcome.status, outcome.output, outcome.error, held)  # fmt: skip
    except DatabaseUnavailableError as exc:
        _hand_back(runtime, wid, exc)  # the replay finishes it
        return
    has_parent = finished is not None and finished[0] is not None
    parking.announce(sv, done_key(wid), parked=has_parent)  # a parent parked in result()


def _hand_back(runtime: ProcessRuntime, workflow_id: str, exc: BaseException) -> None:
    """The database went away mid-run. The row is PENDING under this live
    executor, so no sweep would ever recover it: the runtime releases the
    lease and re-publishes the workflow as soon as the database answers."""
    log.warning("workflow %s: database unavailable (%s); it is replayed from its "
                "checkpoints when the database answers", workflow_id, exc,
                extra={"workflow_id": workflow_id})  # fmt: skip
    runtime.hand_back(workflow_id)
