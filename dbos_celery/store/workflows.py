"""Statements on workflow rows: start, read, list, claim (the lease), finish,
release; and management: cancel, expire, resume, fork.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ARRAY,
    Float,
    Integer,
    LargeBinary,
    Text,
    and_,
    bindparam,
    case,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..status import RESUMABLE, Status
from .common import (
    ASYNC_COMMIT,
    HELD,
    NCOLS,
    WID,
    WORKFLOW_COLS,
    StepRow,
    Target,
    WorkflowRow,
    cancel_live,
    live_worker,
    status_in,
    workflow_row,
)
from .dialect import (
    from_epoch,
    in_list,
    least,
    now,
    seconds,
)
from .engine import Executor
from .steps import checkpoint_params, insert_statement, insert_steps, list_steps
from .tables import events
from .tables import steps as st
from .tables import workflows as wf

_INSERT_WORKFLOW = (
    pg_insert(wf)
    .values(
        id=WID,
        name=bindparam("name", type_=Text),
        status=Status.ENQUEUED,
        inputs=bindparam("inputs", type_=LargeBinary),
        parent_id=bindparam("parent", type_=Text),
        queue=bindparam("queue", type_=Text),
        trace=bindparam("trace", type_=Text),
        # the earlier of its own timeout and the deadline it inherits (NULLs ignored)
        deadline=least(
            from_epoch(bindparam("inherit", type_=Float)),
            now() + seconds(bindparam("timeout", type_=Float)),
        ),
    )
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(wf.c.id)
)


def insert_workflow(
    ex: Executor,
    workflow_id: str,
    name: str,
    inputs: bytes,
    parent_id: str | None,
    timeout: float | None = None,
    inherited_deadline: float | None = None,
    queue: str | None = None,
    trace: str | None = None,
) -> bool:
    """Insert an ENQUEUED workflow that runs on ``queue`` (``trace``: the
    traceparent of its start); False when the id exists already. Its
    deadline is ``timeout`` seconds from now, or the inherited deadline
    (epoch seconds) if earlier; none when both are None."""
    params = {"wid": workflow_id, "name": name, "inputs": inputs, "parent": parent_id,
              "timeout": timeout, "inherit": inherited_deadline, "queue": queue,
              "trace": trace}  # fmt: skip
    return ex.first(_INSERT_WORKFLOW, params) is not None


_WORKFLOW_NAME = select(wf.c.name).where(wf.c.id == WID)


def workflow_name(ex: Executor, workflow_id: str) -> str | None:
    row = ex.first(_WORKFLOW_NAME, {"wid": workflow_id})
    return None if row is None else str(row[0])


_GET_WORKFLOW = select(*WORKFLOW_COLS).where(wf.c.id == WID)


def get_workflow(ex: Executor, workflow_id: str) -> WorkflowRow | None:
    row = ex.first(_GET_WORKFLOW, {"wid": workflow_id})
    return workflow_row(row) if row is not None else None


_GET_STATUS = select(wf.c.status, wf.c.output, wf.c.error).where(wf.c.id == WID)


def get_status(ex: Executor, workflow_id: str) -> tuple[str, bytes | None, bytes | None] | None:
    row = ex.first(_GET_STATUS, {"wid": workflow_id})
    return (row[0], row[1], row[2]) if row is not None else None


_EXISTS = select(literal(1)).where(wf.c.id == WID)


def workflow_exists(ex: Executor, workflow_id: str) -> bool:
    return ex.first(_EXISTS, {"wid": workflow_id}) is not None


_VISIBLE = select(wf.c.id).where(in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))))


def visible_workflows(ex: Executor, workflow_ids: list[str]) -> set[str]:
    """Those of ``workflow_ids`` whose rows this session sees (committed)."""
    return {r[0] for r in ex.rows(_VISIBLE, {"ids": workflow_ids})}


@dataclass(frozen=True)
class WorkflowQuery:
    """Filters of list_workflows: created in [created_after, created_before)
    when given; oldest first unless ``newest_first``."""

    status: str | None = None
    name: str | None = None
    parent: str | None = None
    limit: int | None = None
    offset: int | None = None
    newest_first: bool = False
    created_after: datetime | None = None
    created_before: datetime | None = None


def list_workflows(ex: Executor, f: WorkflowQuery) -> list[WorkflowRow]:
    q = select(*WORKFLOW_COLS)
    if f.status is not None:
        q = q.where(wf.c.status == f.status)
    if f.name is not None:
        q = q.where(wf.c.name == f.name)
    if f.parent is not None:
        q = q.where(wf.c.parent_id == f.parent)
    if f.created_after is not None:
        q = q.where(wf.c.created_at >= f.created_after)
    if f.created_before is not None:
        q = q.where(wf.c.created_at < f.created_before)
    order = wf.c.created_at.desc() if f.newest_first else wf.c.created_at.asc()
    q = q.order_by(order, wf.c.id).limit(f.limit).offset(f.offset)
    return [workflow_row(r) for r in ex.rows(q, cache=False)]


_CLAIM_UPDATE = (
    update(wf)
    .where(
        wf.c.id == WID,
        or_(
            wf.c.status == Status.ENQUEUED,
            and_(wf.c.status == Status.PENDING, ~live_worker(wf.c.executor_id)),
        ),
    )
    .values(
        status=Status.PENDING,
        executor_id=bindparam("executor", type_=Text),
        reserved_by=None,
        updated_at=now(),
        recovery_attempts=wf.c.recovery_attempts
        + case((wf.c.status == Status.PENDING, 1), else_=0),
    )
    .returning(*WORKFLOW_COLS)
)
_CLAIMED = _CLAIM_UPDATE.cte("claimed")
# The claim may commit asynchronously: if Postgres loses it in a crash, the
# row is back to ENQUEUED (or PENDING under a dead executor), the runner's
# next checkpoint fails its lease check, and the sweep publishes it again.
_CLAIM = (
    select(_CLAIMED, st.c.seq, st.c.name, st.c.output, st.c.error)
    .select_from(
        _CLAIMED.join(ASYNC_COMMIT, literal_column("true")).outerjoin(
            st, st.c.workflow_id == _CLAIMED.c.id
        )
    )
    .order_by(st.c.seq)
)


def claim_workflow(
    ex: Executor, workflow_id: str, executor_id: str, worker_timeout: float
) -> tuple[WorkflowRow, list[StepRow]] | None:
    """Take the lease on a workflow and read its checkpoints in one round trip.

    Claimable: ENQUEUED, or PENDING under an executor that stopped
    heartbeating (taking it over counts as a recovery). None when another
    live process runs it or it has finished: the caller drops the delivery.
    """
    params = {"wid": workflow_id, "executor": executor_id, "timeout": worker_timeout}
    if ex.sqlite:
        with ex.atomic():
            row = ex.first(_CLAIM_UPDATE, params)
            return None if row is None else (workflow_row(row), list_steps(ex, workflow_id))
    rows = ex.rows(_CLAIM, params)
    if not rows:
        return None
    first = workflow_row(rows[0])
    steps = [StepRow(*r[NCOLS:]) for r in rows if r[NCOLS] is not None]
    return first, steps


_FINISH = (
    update(wf)
    .where(HELD)
    .values(
        status=bindparam("status", type_=Text),
        output=bindparam("output", type_=LargeBinary),
        error=bindparam("error", type_=LargeBinary),
        updated_at=now(),
    )
    .returning(wf.c.parent_id)
)


# with a step's held checkpoint: both in one statement (Postgres)
_FINISH_WITH_STEP = _FINISH.add_cte(insert_statement(1).cte("held_step"))


def finish_workflow(
    ex: Executor,
    workflow_id: str,
    executor_id: str,
    status: str,
    output: bytes | None,
    error: bytes | None,
    held: StepRow | None = None,
) -> tuple[str | None] | None:
    """Record the outcome, and the ``held`` step checkpoint with it, if this
    executor still holds the lease: (parent id,) when it did, else None
    (nothing written). A checkpoint already at the held one's number raises
    a unique violation."""
    params = {"wid": workflow_id, "executor": executor_id, "status": status,
              "output": output, "error": error}  # fmt: skip
    if held is None:
        row = ex.first(_FINISH, params)
    elif ex.sqlite:  # no INSERT inside a CTE
        with ex.atomic():
            written = insert_steps(ex, workflow_id, [held], executor_id)
            row = ex.first(_FINISH, params) if written else None
    else:
        row = ex.first(_FINISH_WITH_STEP, {**params, **checkpoint_params(workflow_id, [held])})
    return None if row is None else (row[0],)


_TARGET = (wf.c.id, wf.c.name, wf.c.queue)
_RELEASE = (
    update(wf)
    .where(HELD)
    .values(status=Status.ENQUEUED, executor_id=None, updated_at=now())
    .returning(*_TARGET)
)


def release_workflow(ex: Executor, workflow_id: str, executor_id: str) -> Target | None:
    """Give the lease back (ENQUEUED again) so that a new delivery replays
    it; the workflow to publish, or None when the lease was not ours."""
    row = ex.first(_RELEASE, {"wid": workflow_id, "executor": executor_id})
    return None if row is None else Target(*row)


_LEASE_STATE = select(wf.c.status, wf.c.executor_id).where(wf.c.id == WID)


def lease_state(ex: Executor, workflow_id: str) -> tuple[str, str | None] | None:
    """(status, executor_id) of a workflow, or None when it does not exist."""
    row = ex.first(_LEASE_STATE, {"wid": workflow_id})
    return (row[0], row[1]) if row is not None else None


_CANCEL = cancel_live(wf.c.id == WID, wf.c.id)


def cancel_workflow(ex: Executor, workflow_id: str) -> bool:
    """ENQUEUED, PENDING or WAITING -> CANCELLED; False when it is not live (finished,
    cancelled already, or missing). The executor id stays: a runner learns of
    the cancel when its next checkpoint fails the lease check."""
    return ex.first(_CANCEL, {"wid": workflow_id}) is not None


_EXPIRE_OWN = (
    update(wf).where(HELD).values(status=Status.CANCELLED, updated_at=now()).returning(wf.c.id)
)
_CANCEL_CHILDREN = cancel_live(wf.c.parent_id == WID, wf.c.id)


def expire_run(ex: Executor, workflow_id: str, executor_id: str) -> list[str] | None:
    """A runner found its deadline passed: cancel its workflow and that
    workflow's live children; the ids cancelled (its own first). None, and
    nothing written, when ``executor_id`` no longer holds the lease. Run it in
    one transaction."""
    params = {"wid": workflow_id, "executor": executor_id}
    if ex.first(_EXPIRE_OWN, params) is None:
        return None
    return [workflow_id, *(r[0] for r in ex.rows(_CANCEL_CHILDREN, params))]


_RESUME = (
    update(wf)
    .where(wf.c.id == WID, status_in(RESUMABLE))
    .values(
        status=Status.ENQUEUED,
        executor_id=None,
        reserved_by=None,
        recovery_attempts=0,
        publish_count=0,
        deadline=None,
        updated_at=now(),
    )
    .returning(*_TARGET)
)


def resume_workflow(ex: Executor, workflow_id: str) -> Target | None:
    """CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED -> ENQUEUED with a fresh
    recovery count and no deadline; the workflow to publish, or None when it
    is not resumable."""
    row = ex.first(_RESUME, {"wid": workflow_id})
    return None if row is None else Target(*row)


_SOURCE = bindparam("source", type_=Text)
_NEW_ID = bindparam("new_id", type_=Text)
_FORK_WORKFLOW = (
    pg_insert(wf)
    .from_select(
        ["id", "name", "status", "inputs", "queue"],
        select(_NEW_ID, wf.c.name, literal(Status.ENQUEUED, Text), wf.c.inputs, wf.c.queue).where(
            wf.c.id == _SOURCE
        ),
    )
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(*_TARGET)
)
_FORK_STEPS = insert(st).from_select(
    ["workflow_id", "seq", "name", "output", "error"],
    select(_NEW_ID, st.c.seq, st.c.name, st.c.output, st.c.error).where(
        st.c.workflow_id == _SOURCE, st.c.seq < bindparam("from_step", type_=Integer)
    ),
)
_FORK_EVENTS = insert(events).from_select(
    ["workflow_id", "key", "value"],
    select(_NEW_ID, events.c.key, events.c.value).where(events.c.workflow_id == _SOURCE),
)


def fork_workflow(ex: Executor, source_id: str, new_id: str, from_step: int) -> Target | None:
    """Insert ``new_id`` as an ENQUEUED copy of ``source_id`` (name, inputs,
    queue) with the checkpoints at seq < ``from_step`` and the events; the
    new workflow to publish. None when ``new_id`` exists already or the
    source does not: nothing written. Run it in one transaction."""
    params = {"new_id": new_id, "source": source_id, "from_step": from_step}
    row = ex.first(_FORK_WORKFLOW, params)
    if row is None:
        return None
    ex.count(_FORK_STEPS, params)
    ex.count(_FORK_EVENTS, params)
    return Target(*row)


_NOT_RUNNING_HERE = select(wf.c.id).where(
    in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))),
    or_(
        wf.c.status != Status.PENDING,
        wf.c.executor_id.is_distinct_from(bindparam("executor", type_=Text)),
    ),
)


def not_running_here(ex: Executor, workflow_ids: list[str], executor_id: str) -> list[str]:
    """Those of ``workflow_ids`` that are no longer PENDING under
    ``executor_id``: cancelled, timed out, resumed or taken over."""
    rows = ex.rows(_NOT_RUNNING_HERE, {"ids": workflow_ids, "executor": executor_id})
    return [r[0] for r in rows]
