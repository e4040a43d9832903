"""Parking a long wait, and the one way to wake parked workflows.

A wait that lasts longer than ``park_after`` parks its workflow: under the
lease check its row becomes WAITING (no executor) with the wakeup key it
waits for and a wake time, and the run ends (:class:`Parked`), freeing its
Celery slot. Whoever commits what a parked workflow waits for calls
:func:`announce`: the hint wakes in-process and Redis waiters, and the
parked rows waiting for that key and ready now are published again. The
recovery sweep wakes whatever this misses (a lost publish, a crash).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import tracing
from .cancellation import lease_failed
from .store import parking

if TYPE_CHECKING:
    from .config import Settings
    from .context import WorkflowContext
    from .services import Services
    from .store.engine import Executor

log = logging.getLogger("dbos_celery")


class Parked(BaseException):
    """Raised out of a long wait once the workflow's row is WAITING: the run
    ends without finishing (its Celery slot is free); a new delivery replays
    it when what it waits for arrives or its wake time passes. A
    BaseException, so that a workflow's ``except Exception`` cannot keep it."""


class _Ready(Exception):
    """Rolls a park back: what the workflow waits for is there already."""


def parks_at(settings: Settings) -> float | None:
    """The monotonic time at which a wait starting now parks (None: never)."""
    after = settings.park_after
    return None if after is None else time.monotonic() + after


def should_park(sv: Services, at: float | None, remaining: float | None) -> bool:
    """Whether a wait whose park time is monotonic ``at`` (None: parking is
    off) should park now: its park time came, or the worker wants the slot
    (requests wait for one, or it shuts down). ``remaining``: seconds to its
    own wake time (None: none); not when the wake would come sooner than the
    sweep could deliver it."""
    if at is None:
        return False
    if remaining is not None and remaining <= sv.settings.sweep_interval:
        return False
    return time.monotonic() >= at or sv.slots.wanted()


def park(sv: Services, ctx: WorkflowContext, waiting_for: str, wake_at: float | None) -> None:
    """Park the workflow: WAITING with no executor, woken by ``waiting_for``
    or at ``wake_at`` (epoch seconds; the earlier of the wait's and the
    workflow's deadlines). Raises Parked; returns (nothing written) when
    what it waits for exists already. A lost lease raises as a checkpoint
    would."""
    if ctx.deadline is not None:
        wake_at = ctx.deadline if wake_at is None else min(wake_at, ctx.deadline)

    def tx(ex: Executor) -> None:
        ready = parking.park_workflow(ex, ctx.workflow_id, ctx.executor_id, wake_at, waiting_for)
        if ready is None:
            raise lease_failed(ex, ctx)
        if ready:
            raise _Ready

    attributes = {tracing.WORKFLOW_ID: ctx.workflow_id, "dbos_celery.waiting_for": waiting_for}
    try:
        with tracing.span("dbos_celery.park", attributes):
            sv.store.run(tx)
    except _Ready:
        return
    log.debug("workflow %s parked, waiting for %r", ctx.workflow_id, waiting_for,
              extra={"workflow_id": ctx.workflow_id})  # fmt: skip
    # What it waits for may have committed after the park read it but before
    # the park committed: its sender then saw the row not parked yet and woke
    # nothing. Look once more now that the park is visible (else only the
    # sweep would wake it).
    wake(sv, waiting_for)
    raise Parked


def wake(sv: Services, waiting_for: str) -> None:
    """Best effort: publish the workflows parked on ``waiting_for`` whose
    awaited message, event or outcome exists now (the sweep wakes any this
    misses)."""
    try:
        with tracing.span("dbos_celery.wake", {"dbos_celery.waiting_for": waiting_for}) as span:
            woken = sv.store.now(parking.wake_ready, waiting_for)
            for target in woken:
                sv.publish(*target)
            if span is not None:
                span.set_attribute("dbos_celery.woken", [t[0] for t in woken])
    except Exception as exc:  # the sweep is the guarantee
        log.warning("could not wake workflows parked on %r (%s); the sweep will",
                    waiting_for, exc)  # fmt: skip


def announce(sv: Services, key: str, *, parked: bool = True) -> None:
    """After what ``key`` names committed: wake its waiters (in this process
    and, through the notifier, in others), then the workflows parked on it.
    ``parked=False``: the writer knows that none is (skips a statement)."""
    sv.notifier.notify(key)
    if parked:
        wake(sv, key)
