"""Parking: a workflow that waits long parks: its row becomes WAITING (no
executor) with the wakeup key it waits for (``keys`` form) and a wake time.
The sender of what it waits for wakes it (wake_waiting); the sweep wakes the
rest (``workers.sweep``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Float,
    Text,
    and_,
    bindparam,
    exists,
    literal,
    or_,
    select,
    update,
)

from ..keys import CALLS, DISPATCH_PREFIX, DONE, EVENT, MAILBOX, SEP
from ..status import FINAL, Status
from .common import (
    ASYNC_COMMIT,
    HELD,
    Target,
)
from .dialect import (
    from_epoch,
    middle_field,
    now,
)
from .engine import Executor
from .tables import events
from .tables import messages as msg
from .tables import steps as st
from .tables import workflows as wf

# A workflow that waits long parks: its row becomes WAITING (no executor) with
# the wakeup key it waits for (wakeup.key form) and a wake time. The sender of
# what it waits for wakes it (wake_waiting); the sweep wakes the rest.


def awaited_ready(w: Any) -> Any:
    """True when what the parked row ``w`` waits for exists: an unconsumed
    message ("m"), an event ("e"), a final outcome of a workflow ("d")."""
    target = middle_field(w.c.waiting_for, SEP)
    other = wf.alias("awaited")
    ev = events
    return or_(
        exists(
            select(literal(1)).where(
                msg.c.destination_id == w.c.id,
                literal(MAILBOX + SEP, Text) + w.c.id + SEP + msg.c.topic == w.c.waiting_for,
            )
        ),
        exists(
            select(literal(1)).where(
                ev.c.workflow_id == target,
                literal(EVENT + SEP, Text) + ev.c.workflow_id + SEP + ev.c.key == w.c.waiting_for,
            )
        ),
        exists(
            select(literal(1)).where(
                other.c.id == target,
                literal(DONE + SEP, Text) + other.c.id + SEP == w.c.waiting_for,
                or_(*(other.c.status == x for x in FINAL)),
            )
        ),
        _calls_settled(w),
    )


def _calls_settled(w: Any) -> Any:
    """True when the parked row ``w`` waits for its durable.call outcomes
    ("t") and every call it dispatched has its outcome: a dispatch record
    (seq + 1) with a step at seq. A workflow passes a call only once its
    outcome exists, so the calls without one are those it waits for."""
    dispatched = st.alias("dispatched_call")
    outcome = st.alias("call_outcome")
    return and_(
        literal(CALLS + SEP, Text) + w.c.id + SEP == w.c.waiting_for,
        ~exists(
            select(literal(1)).where(
                dispatched.c.workflow_id == w.c.id,
                dispatched.c.name.startswith(DISPATCH_PREFIX, autoescape=True),
                ~exists(
                    select(literal(1)).where(
                        outcome.c.workflow_id == dispatched.c.workflow_id,
                        outcome.c.seq == dispatched.c.seq - 1,
                    )
                ),
            )
        ),
    )


WAKE_VALUES = {
    "status": Status.ENQUEUED,
    "wake_at": None,
    "waiting_for": None,
    "reserved_by": None,
    "publish_count": 0,
    "updated_at": now(),
}
_PARK = (
    update(wf)
    .where(HELD)
    .values(
        status=Status.WAITING,
        executor_id=None,
        reserved_by=None,
        wake_at=from_epoch(bindparam("wake_at", type_=Float)),
        waiting_for=bindparam("waiting_for", type_=Text),
        updated_at=now(),
    )
    .returning(awaited_ready(wf))
)


def park_workflow(
    ex: Executor, workflow_id: str, executor_id: str, wake_at: float | None, waiting_for: str
) -> bool | None:
    """PENDING under ``executor_id`` -> WAITING. None when the executor no
    longer holds the lease (nothing written); else whether what it waits
    for exists already (then the caller rolls the park back)."""
    params = {"wid": workflow_id, "executor": executor_id, "wake_at": wake_at,
              "waiting_for": waiting_for}  # fmt: skip
    row = ex.first(_PARK, params)
    return None if row is None else bool(row[0])


# the rows parked on a key whose awaited message, event or outcome exists:
# the writer of what the key names wakes them right after its commit, and a
# park re-checks its own key once it is visible. Committed asynchronously
# (no wait for the disk): lost in a Postgres crash, the row is still parked
# with what it waits for there, and the sweep wakes it (its run, started by
# this wake's publish meanwhile, finds it parked and drops the delivery)
_WAKE_READY = (
    update(wf)
    .where(
        wf.c.status == Status.WAITING,
        wf.c.waiting_for == bindparam("key", type_=Text),
        awaited_ready(wf),
        ASYNC_COMMIT.c.x.is_not(None),
    )
    .values(**WAKE_VALUES)
    .returning(wf.c.id, wf.c.name, wf.c.queue)
)


def wake_ready(ex: Executor, waiting_for: str) -> list[Target]:
    """WAITING workflows parked on ``waiting_for`` whose awaited message,
    event or outcome(s) exist -> ENQUEUED; each, to publish."""
    return [Target(*r) for r in ex.rows(_WAKE_READY, {"key": waiting_for})]
