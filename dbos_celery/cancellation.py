"""How a running workflow learns that it was cancelled or timed out.

Cancelling sets the row's status to CANCELLED and publishes two hints; the
runner stops at its next durable boundary. The common path costs no extra
round trip:

- Every checkpoint INSERT already checks the lease (PENDING under this
  executor), so a cancelled workflow's next checkpoint writes nothing. Only
  on that failure is the status read, to tell a cancel
  (:class:`WorkflowCancelledError`) from a lost lease.
- Before new work (a step, a wait) the runner looks at two values in memory:
  its deadline (read with the claim) and a stop hint. The hint is set by a
  cancel hint on Redis while the workflow waits, or by its process's
  heartbeat, which asks once per beat which of the process's running
  workflows are no longer its own (so a cancel is noticed within a heartbeat
  without Redis). Only a set hint costs a status read.
- Waits listen to the workflow's cancel key as well as their own, and never
  wait past the workflow's deadline.

**Fencing.** Before new work (a step body, a wait, a call's dispatch) the
runner also checks its process's local lease (``ProcessRuntime.lease_held``:
renewed by each heartbeat, read on the monotonic clock, no round trip). A
process that was paused or starved past it, when another worker may have
taken the workflow over, starts nothing more: the run stops with
LeaseLostError and is handed back. Writes are fenced by the database (each
checkpoint checks the lease); what remains is a pause inside a running step
body, which the step's checkpoint then refuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .errors import LeaseLostError, WorkflowCancelledError
from .keys import cancel_key, done_key
from .status import Status
from .store import workflows

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .services import Services
    from .store.engine import Executor
    from .wakeup import Notifier, Waiter

log = logging.getLogger("dbos_celery")


def notify_stopped(notifier: Notifier, workflow_id: str) -> None:
    """After a cancel committed: wake its result() waiters and its runner."""
    notifier.notify(done_key(workflow_id))
    notifier.notify(cancel_key(workflow_id))


def check(sv: Services, ctx: WorkflowContext | None) -> None:
    """At a durable boundary, before new work: stop if the deadline passed or
    a hint says the workflow may no longer be ours. In memory otherwise."""
    if ctx is None:
        return
    if not sv.runtime().lease_held(ctx.epoch):
        # paused or starved past the lease: another worker may run it now
        log.warning("workflow %s: this process's lease lapsed; it stops here and is "
                    "replayed from its checkpoints", ctx.workflow_id,
                    extra={"workflow_id": ctx.workflow_id})  # fmt: skip
        raise LeaseLostError(ctx.workflow_id)
    if ctx.deadline is not None and time.time() >= ctx.deadline:
        _expire(sv, ctx)
    if ctx.stop_hint:
        ctx.stop_hint = False
        state = sv.store.now(workflows.lease_state, ctx.workflow_id)
        if state != (Status.PENDING, ctx.executor_id):
            raise _stopped(ctx, state)


def lease_failed(ex: Executor, ctx: WorkflowContext) -> BaseException:
    """The error to raise when a checkpoint failed its lease check."""
    return _stopped(ctx, workflows.lease_state(ex, ctx.workflow_id))


def _stopped(ctx: WorkflowContext, state: tuple[str, str | None] | None) -> BaseException:
    if state is not None and state[0] == Status.CANCELLED:
        return WorkflowCancelledError(ctx.workflow_id)
    return LeaseLostError(ctx.workflow_id)


def _expire(sv: Services, ctx: WorkflowContext) -> None:
    """The deadline passed: cancel this run and its live children, then stop."""
    wid = ctx.workflow_id
    cancelled = sv.store.run(workflows.expire_run, wid, ctx.executor_id)
    if cancelled is None:  # not ours any more: a cancel, a resume, a takeover
        raise _stopped(ctx, sv.store.now(workflows.lease_state, wid))
    log.info("workflow %s passed its deadline; cancelled with %d live child(ren)",
             wid, len(cancelled) - 1, extra={"workflow_id": wid})  # fmt: skip
    for cid in cancelled:
        notify_stopped(sv.notifier, cid)
    raise WorkflowCancelledError(wid)


@contextmanager
def watch(
    notifier: Notifier, ctx: WorkflowContext, waiter: Waiter | None = None
) -> Iterator[Waiter]:
    """While a workflow waits: a cancel hint for it sets its stop hint and
    wakes ``waiter`` (or the yielded waiter of the cancel key itself)."""

    def hinted() -> None:
        ctx.stop_hint = True
        if waiter is not None:
            waiter.wake()

    with notifier.waiters.register(cancel_key(ctx.workflow_id), hinted) as own:
        yield waiter or own


def bound(ctx: WorkflowContext | None, seconds: float) -> float:
    """``seconds``, shortened so that a wait ends at the workflow's deadline."""
    if ctx is None or ctx.deadline is None:
        return seconds
    return max(0.0, min(seconds, ctx.deadline - time.time()))
