"""Read-only statements for looking at workflows (the dashboard): keyset
pages of the workflows table with filters, counts by status, and one
workflow's whole record: its row, its checkpoints with their times, the
messages waiting for it, its events, its children and the workers it ran
on. Nothing here writes.

Pages are keyset-paginated on (created_at, id), newest first: a page after
a cursor is one range scan of ``ix_workflows_created`` however deep it is,
where OFFSET would read every row before it. A cursor carries created_at
as the database stores it (a timestamp on Postgres, epoch seconds on
SQLite), so that it compares exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
)

from ..status import Status
from .common import WID, _when
from .dialect import age_seconds, in_list
from .engine import Executor
from .tables import events, worker_workflows, workers
from .tables import messages as msg
from .tables import steps as st
from .tables import workflows as wf

# a cursor: (created_at as stored, id)
Cursor = tuple[Any, str]


@dataclass(frozen=True)
class PageQuery:
    """Filters of a page of workflows, newest first. ``before``: the rows
    older than that cursor (the next page); ``after``: the rows newer than
    it (the page before), still returned newest first. Created in
    [created_after, created_before) when given; ``id_prefix``: ids starting
    with it (case-sensitive)."""

    status: str | None = None
    name: str | None = None
    id_prefix: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    before: Cursor | None = None
    after: Cursor | None = None
    limit: int = 50


@dataclass(frozen=True)
class ListedWorkflow:
    id: str
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    recovery_attempts: int
    executor_id: str | None
    parent_id: str | None
    error: bytes | None
    cursor: Cursor


def _filters(q: PageQuery, *, status: bool = True) -> list[Any]:
    where: list[Any] = []
    if status and q.status is not None:
        where.append(wf.c.status == q.status)
    if q.name is not None:
        where.append(wf.c.name == q.name)
    if q.id_prefix:
        escaped = q.id_prefix.replace("/", "//").replace("%", "/%").replace("_", "/_")
        # LIKE with the whole pattern bound (a range of the primary key under
        # the C collation); substr keeps it case-sensitive on SQLite too
        where.append(wf.c.id.like(escaped + "%", escape="/"))
        where.append(func.substr(wf.c.id, 1, len(q.id_prefix)) == q.id_prefix)
    if q.created_after is not None:
        where.append(wf.c.created_at >= q.created_after)
    if q.created_before is not None:
        where.append(wf.c.created_at < q.created_before)
    return where


def _older(c: Cursor) -> Any:
    # (created_at, id) < c, written so that the created_at index bounds it
    return and_(wf.c.created_at <= c[0], or_(wf.c.created_at < c[0], wf.c.id < c[1]))


def _newer(c: Cursor) -> Any:
    return and_(wf.c.created_at >= c[0], or_(wf.c.created_at > c[0], wf.c.id > c[1]))


_LISTED = (
    wf.c.id, wf.c.name, wf.c.status, wf.c.created_at, wf.c.updated_at,
    wf.c.recovery_attempts, wf.c.executor_id, wf.c.parent_id, wf.c.error,
)  # fmt: skip


def page_statement(q: PageQuery) -> Any:
    """The statement of one page (the benchmark prints its plan)."""
    where = _filters(q)
    if q.after is not None:
        where.append(_newer(q.after))
        order = (wf.c.created_at.asc(), wf.c.id.asc())
    else:
        if q.before is not None:
            where.append(_older(q.before))
        order = (wf.c.created_at.desc(), wf.c.id.desc())
    return select(*_LISTED).where(*where).order_by(*order).limit(q.limit)


_CUSTOM_PLANS = select(func.set_config("plan_cache_mode", "force_custom_plan", True))


def listing(ex: Executor, q: PageQuery, cap: int) -> tuple[list[ListedWorkflow], dict[str, int]]:
    """A page of workflows and the counts by status (``status_counts``).
    Run it in a transaction: on Postgres each statement is planned for its
    own filter values (a name of ten rows and one of half the table want
    different plans; the driver's prepared statements would otherwise
    settle on one generic plan for all after five runs)."""
    if not ex.sqlite:
        ex.rows(_CUSTOM_PLANS)
    return workflow_page(ex, q), status_counts(ex, q, cap)


def workflow_page(ex: Executor, q: PageQuery) -> list[ListedWorkflow]:
    """Up to ``q.limit`` workflows, newest first."""
    rows = ex.rows(page_statement(q), cache=False)
    if q.after is not None:
        rows.reverse()
    return [
        ListedWorkflow(
            r[0], r[1], r[2], _when(r[3]), _when(r[4]), r[5], r[6], r[7], r[8], (r[3], r[0])
        )  # fmt: skip
        for r in rows
    ]


def counts_statement(q: PageQuery, cap: int) -> Any:
    """How many workflows of each status match the filters of ``q`` other
    than its status and cursor, each count stopping at ``cap + 1``: the work
    is bounded by the cap on any table (each status one range of its index),
    where an exact count reads every matching row. One row, a column per
    status in ``Status`` order."""
    return select(
        *(
            select(func.count())
            .select_from(
                select(literal(1).label("x")).where(wf.c.status == s, *_filters(q, status=False))
                .limit(cap + 1).subquery()
            )
            .scalar_subquery()
            for s in Status
        )
    )  # fmt: skip


def status_counts(ex: Executor, q: PageQuery, cap: int) -> dict[str, int]:
    """The statuses with workflows matching ``q`` and their counts (at most
    ``cap + 1``: more than ``cap``)."""
    row = ex.rows(counts_statement(q, cap), cache=False)[0]
    return {s.value: int(n) for s, n in zip(Status, row, strict=True) if n}


_NAMES = select(worker_workflows.c.name).distinct().order_by(worker_workflows.c.name).limit(500)


def known_names(ex: Executor) -> list[str]:
    """The workflow names workers have registered (suggestions for a filter)."""
    return [r[0] for r in ex.rows(_NAMES)]


@dataclass(frozen=True)
class WorkflowRecord:
    """A workflow's row, every column."""

    id: str
    name: str
    status: str
    inputs: bytes
    output: bytes | None
    error: bytes | None
    executor_id: str | None
    reserved_by: str | None
    recovery_attempts: int
    parent_id: str | None
    created_at: datetime
    updated_at: datetime
    deadline: datetime | None
    wake_at: datetime | None
    waiting_for: str | None
    queue: str | None
    killed: str | None
    kills: int


_RECORD = select(
    wf.c.id, wf.c.name, wf.c.status, wf.c.inputs, wf.c.output, wf.c.error, wf.c.executor_id,
    wf.c.reserved_by, wf.c.recovery_attempts, wf.c.parent_id, wf.c.created_at, wf.c.updated_at,
    wf.c.deadline, wf.c.wake_at, wf.c.waiting_for, wf.c.queue, wf.c.killed, wf.c.kills,
).where(wf.c.id == WID)  # fmt: skip


def workflow_record(ex: Executor, workflow_id: str) -> WorkflowRecord | None:
    r = ex.first(_RECORD, {"wid": workflow_id})
    if r is None:
        return None
    return WorkflowRecord(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], _when(r[10]), _when(r[11]),
        _when(r[12]), _when(r[13]), r[14], r[15], r[16], r[17],
    )  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint and when it was committed."""

    seq: int
    name: str
    output: bytes | None
    error: bytes | None
    created_at: datetime


_TIMELINE = (
    select(st.c.seq, st.c.name, st.c.output, st.c.error, st.c.created_at)
    .where(st.c.workflow_id == WID)
    .order_by(st.c.seq)
    .limit(bindparam("n", type_=Integer))
)


def timeline(ex: Executor, workflow_id: str, limit: int = 2000) -> list[Checkpoint]:
    """The first ``limit`` checkpoints of a workflow, in order."""
    rows = ex.rows(_TIMELINE, {"wid": workflow_id, "n": limit})
    return [Checkpoint(r[0], r[1], r[2], r[3], _when(r[4])) for r in rows]


@dataclass(frozen=True)
class Mailbox:
    """The messages waiting for a workflow on one topic ('' is the default)."""

    topic: str
    count: int
    oldest: datetime


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    created_at: datetime


_MAILBOXES = (
    select(msg.c.topic, func.count(), func.min(msg.c.created_at))
    .where(msg.c.destination_id == WID)
    .group_by(msg.c.topic)
    .order_by(msg.c.topic)
)
_MESSAGES = (
    select(msg.c.id, msg.c.topic, msg.c.payload, msg.c.created_at)
    .where(msg.c.destination_id == WID)
    .order_by(msg.c.topic, msg.c.id)
    .limit(bindparam("n", type_=Integer))
)


def mailboxes(ex: Executor, workflow_id: str) -> list[Mailbox]:
    """How many messages wait for a workflow, per topic."""
    rows = ex.rows(_MAILBOXES, {"wid": workflow_id})
    return [Mailbox(r[0], int(r[1]), _when(r[2])) for r in rows]


def waiting_messages(ex: Executor, workflow_id: str, limit: int = 50) -> list[Message]:
    """The first ``limit`` messages waiting for a workflow, by topic, oldest first."""
    rows = ex.rows(_MESSAGES, {"wid": workflow_id, "n": limit})
    return [Message(int(r[0]), r[1], r[2], _when(r[3])) for r in rows]


@dataclass(frozen=True)
class Event:
    key: str
    value: bytes
    updated_at: datetime


_EVENTS = (
    select(events.c.key, events.c.value, events.c.updated_at)
    .where(events.c.workflow_id == WID)
    .order_by(events.c.key)
    .limit(bindparam("n", type_=Integer))
)


def events_of(ex: Executor, workflow_id: str, limit: int = 200) -> list[Event]:
    rows = ex.rows(_EVENTS, {"wid": workflow_id, "n": limit})
    return [Event(r[0], r[1], _when(r[2])) for r in rows]


@dataclass(frozen=True)
class Child:
    id: str
    name: str
    status: str
    created_at: datetime


_CHILDREN = (
    select(wf.c.id, wf.c.name, wf.c.status, wf.c.created_at)
    .where(wf.c.parent_id == WID)
    .order_by(wf.c.created_at, wf.c.id)
    .limit(bindparam("n", type_=Integer))
)
_CHILD_COUNT = select(func.count()).where(wf.c.parent_id == WID)


def children(ex: Executor, workflow_id: str, limit: int = 200) -> tuple[list[Child], int]:
    """The first ``limit`` children of a workflow, oldest first, and how many it has."""
    rows = ex.rows(_CHILDREN, {"wid": workflow_id, "n": limit})
    found = [Child(r[0], r[1], r[2], _when(r[3])) for r in rows]
    if len(found) < limit:
        return found, len(found)
    return found, int(ex.first(_CHILD_COUNT, {"wid": workflow_id})[0])


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as its heartbeats describe it."""

    id: str
    hostname: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime
    silent_for: float  # seconds since its last heartbeat, by the database's clock


_WORKERS = select(
    workers.c.id,
    workers.c.hostname,
    workers.c.pid,
    workers.c.started_at,
    workers.c.last_heartbeat,
    age_seconds(workers.c.last_heartbeat),
).where(in_list(workers.c.id, bindparam("ids", type_=ARRAY(Text))))


def workers_by_id(ex: Executor, worker_ids: list[str]) -> dict[str, WorkerInfo]:
    """The workers among ``worker_ids`` that are still recorded (a dead one
    is forgotten a day after its last heartbeat)."""
    if not worker_ids:
        return {}
    rows = ex.rows(_WORKERS, {"ids": sorted(set(worker_ids))})
    return {
        r[0]: WorkerInfo(r[0], r[1], int(r[2]), _when(r[3]), _when(r[4]), float(r[5])) for r in rows
    }
