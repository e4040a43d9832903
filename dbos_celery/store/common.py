"""What the statements of every table group share: row types, the lease
condition, the liveness of a worker, asynchronous commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import (
    Float,
    Text,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from ..status import LIVE, Status
from .dialect import async_commit, now, seconds
from .engine import Executor
from .tables import workers
from .tables import workflows as wf


@dataclass(frozen=True)
class WorkflowRow:
    id: str
    name: str
    status: str
    inputs: bytes
    output: bytes | None
    error: bytes | None
    executor_id: str | None
    recovery_attempts: int
    parent_id: str | None
    created_at: datetime
    updated_at: datetime
    deadline: datetime | None
    killed: str | None = None  # why its last runners died in a step
    kills: int = 0  # how many in a row
    trace: str | None = None  # the traceparent of its start


class Target(NamedTuple):
    """A workflow to publish: its id, its name and the queue it runs on."""

    id: str
    name: str
    queue: str | None


@dataclass(frozen=True)
class StepRow:
    seq: int
    name: str
    output: bytes | None
    error: bytes | None


WORKFLOW_COLS = (
    wf.c.id, wf.c.name, wf.c.status, wf.c.inputs, wf.c.output, wf.c.error,
    wf.c.executor_id, wf.c.recovery_attempts, wf.c.parent_id,
    wf.c.created_at, wf.c.updated_at, wf.c.deadline, wf.c.killed, wf.c.kills, wf.c.trace,
)  # fmt: skip
NCOLS = len(WORKFLOW_COLS)


def _when(value: Any) -> Any:
    # SQLite keeps times as epoch seconds
    return datetime.fromtimestamp(value, timezone.utc) if isinstance(value, float) else value


def workflow_row(r: Any) -> WorkflowRow:
    return WorkflowRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], _when(r[9]), _when(r[10]),
        _when(r[11]), r[12], r[13], r[14],
    )  # fmt: skip


WID = bindparam("wid", type_=Text)


# the lease: this row is running (PENDING) under this executor
HELD = and_(
    wf.c.id == WID,
    wf.c.executor_id == bindparam("executor", type_=Text),
    wf.c.status == Status.PENDING,
)


def live_worker(executor_col: Any) -> Any:
    w = workers
    return exists(
        select(literal(1)).where(
            w.c.id == executor_col,
            w.c.last_heartbeat > now() - seconds(bindparam("timeout", type_=Float)),
        )
    )


ASYNC_COMMIT = select(async_commit().label("x")).cte("async_commit")


def status_in(statuses: tuple[str, ...]) -> Any:
    # not IN (...): an expanding parameter would need every value at compile time
    return or_(*(wf.c.status == x for x in statuses))


def cancel_live(condition: Any, *returning: Any) -> Any:
    """An UPDATE: the live rows (ENQUEUED, PENDING, WAITING) matching
    ``condition`` become CANCELLED, no longer parked; RETURNING ``returning``."""
    return (
        update(wf)
        .where(condition, status_in(LIVE))
        .values(status=Status.CANCELLED, wake_at=None, waiting_for=None, updated_at=now())
        .returning(*returning)
    )


_IDENTITY = select(func.current_database(), func.pg_postmaster_start_time())


def database_identity(ex: Executor) -> tuple[Any, ...]:
    """Which Postgres database a session is on: its name and its server's
    start time (a caller's connection must be on the Durable's)."""
    return tuple(ex.first(_IDENTITY))
