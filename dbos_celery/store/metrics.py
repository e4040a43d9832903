"""Read-only statements for metrics, computed from the tables so that they
are right whatever the number of worker processes: workflows by status and
name, the oldest queued and running workflow, messages waiting, checkpoints
written lately, live workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Float, bindparam, case, func, select

from ..status import LIVE, Status
from .common import status_in
from .dialect import age_seconds, now, seconds
from .engine import Executor
from .tables import messages as msg
from .tables import steps as st
from .tables import workers
from .tables import workflows as wf


@dataclass(frozen=True)
class NameCount:
    status: str
    name: str
    count: int
    recovery_attempts: int  # their recovery attempts, added up


_BY_STATUS_NAME = select(
    wf.c.status, wf.c.name, func.count(), func.coalesce(func.sum(wf.c.recovery_attempts), 0)
).group_by(wf.c.status, wf.c.name)


def by_status_and_name(ex: Executor) -> list[NameCount]:
    """Every (status, name) pair with its count: one pass over the table."""
    return [NameCount(r[0], r[1], int(r[2]), int(r[3])) for r in ex.rows(_BY_STATUS_NAME)]


def _oldest(status: Status) -> object:
    # min() of the leading (status, updated_at) index: one index lookup
    return (
        select(age_seconds(func.min(wf.c.updated_at)))
        .where(wf.c.status == status)
        .scalar_subquery()
    )


OLDEST_STATUSES = (Status.ENQUEUED, Status.PENDING, Status.WAITING)
_OLDEST = select(*(_oldest(s) for s in OLDEST_STATUSES))  # type: ignore[call-overload]


def oldest_ages(ex: Executor) -> dict[str, float | None]:
    """Seconds since the longest-standing workflow of each live status
    entered it (``updated_at``: enqueued, claimed, parked); None when none."""
    row = ex.first(_OLDEST)
    return {
        str(s): (None if v is None else max(0.0, float(v)))
        for s, v in zip(OLDEST_STATUSES, row, strict=True)
    }


@dataclass(frozen=True)
class WaitingMessages:
    live: int  # for live workflows: to be consumed
    finished: int  # for finished ones: never consumed (kept until collected)
    oldest_live: float | None  # seconds since the oldest one for a live workflow was sent


_DEST_LIVE = case((status_in(LIVE), 1), else_=0)
_MESSAGES = (
    select(_DEST_LIVE, func.count(), age_seconds(func.min(msg.c.created_at)))
    .select_from(msg.join(wf, wf.c.id == msg.c.destination_id))
    .group_by(_DEST_LIVE)
)


def waiting_messages(ex: Executor) -> WaitingMessages:
    got = {int(r[0]): (int(r[1]), r[2]) for r in ex.rows(_MESSAGES)}
    live, age = got.get(1, (0, None))
    return WaitingMessages(live, got.get(0, (0, None))[0],
                           None if age is None else max(0.0, float(age)))  # fmt: skip


# the BRIN index on created_at (Postgres) keeps this to the table's tail
_RECENT_STEPS = select(func.count()).where(
    st.c.created_at > now() - seconds(bindparam("window", type_=Float))
)


def recent_checkpoints(ex: Executor, window: float) -> int:
    """Checkpoints (steps, sends, recvs, ...) committed in the last ``window`` seconds."""
    return int(ex.first(_RECENT_STEPS, {"window": window})[0])


_LIVE_WORKERS = select(func.count()).where(
    workers.c.last_heartbeat > now() - seconds(bindparam("timeout", type_=Float))
)


def live_workers(ex: Executor, worker_timeout: float) -> int:
    """Worker processes that heartbeat within ``worker_timeout``."""
    return int(ex.first(_LIVE_WORKERS, {"timeout": worker_timeout})[0])
