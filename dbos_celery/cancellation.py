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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import database as db
from .errors import LeaseLostError, WorkflowCancelledError
from .wakeup import Waiter, key

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .durable import Durable

log = logging.getLogger("dbos_celery")


def cancel_key(workflow_id: str) -> str:
    """The wakeup key a workflow's waits listen to for a cancel."""
    return key("c", workflow_id)


def notify_stopped(d: Durable, workflow_id: str) -> None:
    """After a cancel committed: wake its result() waiters and its runner."""
    d.notifier.notify(d.done_key(workflow_id))
    d.notifier.notify(cancel_key(workflow_id))


def check(d: Durable, ctx: WorkflowContext | None) -> None:
    """At a durable boundary, before new work: stop if the deadline passed or
    a hint says the workflow may no longer be ours. In memory otherwise."""
    if ctx is None:
        return
    if ctx.deadline is not None and time.time() >= ctx.deadline:
        _expire(d, ctx)
    if ctx.stop_hint:
        ctx.stop_hint = False
        state = d.db.now(db.lease_state, ctx.workflow_id)
        if state != (db.PENDING, ctx.executor_id):
            raise _stopped(ctx, state)


def lease_failed(ex: db.Executor, ctx: WorkflowContext) -> BaseException:
    """The error to raise when a checkpoint failed its lease check."""
    return _stopped(ctx, db.lease_state(ex, ctx.workflow_id))


def _stopped(ctx: WorkflowContext, state: tuple[str, str | None] | None) -> BaseException:
    if state is not None and state[0] == db.CANCELLED:
        return WorkflowCancelledError(ctx.workflow_id)
    return LeaseLostError(ctx.workflow_id)


def _expire(d: Durable, ctx: WorkflowContext) -> None:
    """The deadline passed: cancel this run and its live children, then stop."""
    wid = ctx.workflow_id
    cancelled = d.db.run(db.expire_run, wid, ctx.executor_id)
    if cancelled is None:  # not ours any more: a cancel, a resume, a takeover
        raise _stopped(ctx, d.db.now(db.lease_state, wid))
    log.info("workflow %s passed its deadline; cancelled with %d live child(ren)",
             wid, len(cancelled) - 1, extra={"workflow_id": wid})  # fmt: skip
    for cid in cancelled:
        notify_stopped(d, cid)
    raise WorkflowCancelledError(wid)


@contextmanager
def watch(d: Durable, ctx: WorkflowContext, waiter: Waiter | None = None) -> Iterator[Waiter]:
    """While a workflow waits: a cancel hint for it sets its stop hint and
    wakes ``waiter`` (or the yielded waiter of the cancel key itself)."""

    def hinted() -> None:
        ctx.stop_hint = True
        if waiter is not None:
            waiter.wake()

    with d.notifier.waiters.register(cancel_key(ctx.workflow_id), hinted) as own:
        yield waiter or own


def bound(ctx: WorkflowContext | None, seconds: float) -> float:
    """``seconds``, shortened so that a wait ends at the workflow's deadline."""
    if ctx is None or ctx.deadline is None:
        return seconds
    return max(0.0, min(seconds, ctx.deadline - time.time()))


def flag(d: Durable, ctxs: list[WorkflowContext]) -> None:
    """Runs found no longer ours (by the heartbeat): check at the next
    boundary, and wake them now if they wait."""
    for ctx in ctxs:
        ctx.stop_hint = True
        d.notifier.waiters.wake(cancel_key(ctx.workflow_id))


class _Parked(BaseException):
    """Raised out of a long wait once the workflow's row is WAITING: the run
    ends without finishing (its Celery slot is free); a new delivery replays
    it when what it waits for arrives or its wake time passes. A
    BaseException, so that a workflow's ``except Exception`` cannot keep it."""


class _Ready(Exception):
    """Rolls a park back: what the workflow waits for is there already."""


def should_park(d: Durable, parks_at: float | None, remaining: float | None) -> bool:
    """Whether a wait that began parking at monotonic ``parks_at`` should
    park now; ``remaining``: seconds to its own deadline (None: none). Not
    when the wake would come sooner than the sweep could deliver it."""
    if parks_at is None or time.monotonic() < parks_at:
        return False
    return remaining is None or remaining > d.sweep_interval


def parks_at(d: Durable) -> float | None:
    """The monotonic time at which a wait starting now parks (None: never)."""
    return None if d.park_after is None else time.monotonic() + d.park_after


def park(d: Durable, ctx: WorkflowContext, waiting_for: str, wake_at: float | None) -> None:
    """Park the workflow: WAITING with no executor, woken by ``waiting_for``
    or at ``wake_at`` (epoch seconds; the earlier of the wait's and the
    workflow's deadlines). Raises _Parked; returns (nothing written) when
    what it waits for exists already. A lost lease raises as a checkpoint
    would."""
    if ctx.deadline is not None:
        wake_at = ctx.deadline if wake_at is None else min(wake_at, ctx.deadline)

    def tx(ex: db.Executor) -> None:
        ready = db.park_workflow(ex, ctx.workflow_id, ctx.executor_id, wake_at, waiting_for)
        if ready is None:
            raise lease_failed(ex, ctx)
        if ready:
            raise _Ready

    try:
        d.db.run(tx)
    except _Ready:
        return
    log.debug("workflow %s parked, waiting for %r", ctx.workflow_id, waiting_for,
             extra={"workflow_id": ctx.workflow_id})  # fmt: skip
    # What it waits for may have committed after the park read it but before
    # the park committed: its sender then saw the row not parked yet and woke
    # nothing. Look once more now that the park is visible (else only the
    # sweep would wake it).
    try:
        for wid, name in d.db.now(db.wake_if_ready, ctx.workflow_id):
            d.publish(wid, name)
    except Exception as exc:  # the sweep is the guarantee
        log.warning("could not re-check parked workflow %s (%s); the sweep will",
                    ctx.workflow_id, exc, extra={"workflow_id": ctx.workflow_id})  # fmt: skip
    raise _Parked


def wake(d: Durable, waiting_for: str) -> None:
    """Best effort, after what ``waiting_for`` names committed: publish the
    workflows parked on it (the sweep wakes any this misses)."""
    try:
        for wid, name in d.db.now(db.wake_waiting, waiting_for):
            d.publish(wid, name)
    except Exception as exc:  # the sweep is the guarantee
        log.warning("could not wake parked workflows (%s); the sweep will", exc)
