"""Retention: deleting finished workflows and everything that belongs to
them (steps and call records, events, leftover messages, send keys), in
small batches, each its own short transaction.

A batch locks its workflow rows (``FOR UPDATE SKIP LOCKED``: rows another
transaction holds are left for a later batch), re-checks that they are
finished, and deletes their dependents first. A resume, fork or send that
races the delete either waits for it and then finds nothing, or wins and
the row is no longer finished (and is kept). Every statement is backed by
an index (``ix_workflows_status_updated`` and the primary keys).
"""

from __future__ import annotations

from sqlalchemy import ARRAY, Float, Integer, Text, bindparam, delete, func, select

from ..status import FINAL
from .common import status_in
from .dialect import from_epoch, in_list, try_lock
from .engine import Executor
from .tables import events, send_keys, steps
from .tables import messages as msg
from .tables import workflows as wf

_FINAL = status_in(FINAL)
_CUTOFF = from_epoch(bindparam("cutoff", type_=Float))
# the newest ``keep`` finished workflows are kept whatever their age
_KEPT = (
    select(wf.c.id)
    .where(_FINAL)
    .order_by(wf.c.updated_at.desc())
    .limit(bindparam("keep", type_=Integer))
)
_DUE = (_FINAL, wf.c.updated_at < _CUTOFF, wf.c.id.not_in(_KEPT.scalar_subquery()))
_BATCH = (
    select(wf.c.id)
    .where(*_DUE)
    .order_by(wf.c.updated_at)
    .limit(bindparam("batch", type_=Integer))
    .with_for_update(skip_locked=True)
)
_COUNT = select(func.count()).select_from(wf).where(*_DUE)
_IDS = bindparam("ids", type_=ARRAY(Text))
_DELETES = (
    delete(steps).where(in_list(steps.c.workflow_id, _IDS)),
    delete(events).where(in_list(events.c.workflow_id, _IDS)),
    delete(msg).where(in_list(msg.c.destination_id, _IDS)),
    delete(send_keys).where(in_list(send_keys.c.destination_id, _IDS)),
)
_DELETE_WORKFLOWS = delete(wf).where(in_list(wf.c.id, _IDS), _FINAL)
_LOCK = select(try_lock(bindparam("lock", type_=Text)))

# no keep_latest: a LIMIT this large keeps nothing
KEEP_NONE = 0


def _params(cutoff: float, keep: int | None) -> dict[str, object]:
    return {"cutoff": cutoff, "keep": keep or KEEP_NONE}


def count_due(ex: Executor, cutoff: float, keep: int | None) -> int:
    """How many finished workflows a collection would delete now."""
    return int(ex.first(_COUNT, _params(cutoff, keep))[0])


def delete_batch(
    ex: Executor, cutoff: float, keep: int | None, batch: int, lock: str | None = None
) -> int | None:
    """Delete up to ``batch`` finished workflows last updated before
    ``cutoff`` (epoch seconds), except the ``keep`` newest, with all their
    rows (in the caller's transaction); how many. None when ``lock`` (a
    cluster-wide name) is held by another process."""
    if lock is not None and not ex.first(_LOCK, {"lock": lock})[0]:
        return None
    ids = [r[0] for r in ex.rows(_BATCH, {**_params(cutoff, keep), "batch": batch})]
    if not ids:
        return 0
    for stmt in _DELETES:
        ex.count(stmt, {"ids": ids})
    return ex.count(_DELETE_WORKFLOWS, {"ids": ids})
