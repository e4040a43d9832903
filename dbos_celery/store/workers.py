"""Workers (heartbeats, prefetch reservations, liveness) and the recovery
sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    Float,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..errors import ConfigurationError
from ..keys import sweep_lock
from ..status import Status
from .common import cancel_live, live_worker
from .dialect import (
    in_list,
    least,
    now,
    pow2,
    seconds,
    short_idle,
    try_lock,
)
from .engine import Executor
from .parking import WAKE_VALUES, awaited_ready
from .tables import worker_workflows, workers
from .tables import workflows as wf

_WORKER = pg_insert(workers).values(
    id=bindparam("worker", type_=Text),
    hostname=bindparam("hostname", type_=Text),
    pid=bindparam("pid", type_=Integer),
)
_HEARTBEAT = _WORKER.on_conflict_do_update(index_elements=["id"], set_={"last_heartbeat": now()})
# the beater's statements (run by it, compiled here): beats for the live
# processes of its worker, and marks those that are gone dead at once (so
# long ago that the next sweep recovers their workflows and forgets them)
_IDS = in_list(workers.c.id, bindparam("ids", type_=ARRAY(Text)))
BEAT = update(workers).where(_IDS).values(last_heartbeat=now())
DEAD = (
    update(workers)
    .where(_IDS)
    .values(last_heartbeat=now() - seconds(bindparam("forgotten", 86401.0, type_=Float)))
)
_JOIN = _WORKER.on_conflict_do_nothing(index_elements=["id"])
_RESERVE = (
    update(wf)
    .where(in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))), wf.c.status == Status.ENQUEUED)
    .values(reserved_by=bindparam("worker", type_=Text))
)
# messages this live worker received but holds no more (its broker connection
# was reset: Celery drops the prefetched requests); the sweep then treats
# them as never received
_UNRESERVE = (
    update(wf)
    .where(
        in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))),
        wf.c.status == Status.ENQUEUED,
        wf.c.reserved_by == bindparam("worker", type_=Text),
    )
    .values(reserved_by=None)
)


# SQLite serves one machine: a worker of another host beat within this window
SHARED_FILE_WINDOW = 60.0
_OTHER_HOST = (
    select(workers.c.hostname)
    .where(
        workers.c.hostname != bindparam("hostname", type_=Text),
        workers.c.last_heartbeat > now() - seconds(bindparam("window", type_=Float)),
    )
    .limit(1)
)


_REGISTER = (
    pg_insert(worker_workflows)
    .values(worker_id=bindparam("worker", type_=Text), name=bindparam("name", type_=Text))
    .on_conflict_do_nothing()
)


def heartbeat(
    ex: Executor,
    worker_id: str,
    hostname: str,
    pid: int,
    reserved: list[str],
    dropped: list[str] | None = None,
    names: list[str] | None = None,
    beat: bool = True,
) -> None:
    """Beat for ``worker_id`` (unless its beater beats for it: ``beat``
    False, though a missing row is made); record the workflow messages it received
    (``reserved``), forget those it received but holds no more
    (``dropped``), and record the workflow ``names`` it has registered (its
    first beat). On SQLite, refuses (ConfigurationError) when a
    worker of another host beat within SHARED_FILE_WINDOW: one file shared
    by two machines (a network filesystem) has no safe locking."""
    if ex.sqlite:
        other = ex.first(_OTHER_HOST, {"hostname": hostname, "window": SHARED_FILE_WINDOW})
        if other is not None:
            raise ConfigurationError(
                f"this SQLite database is used by workers on {other[0]!r} and {hostname!r}: "
                "SQLite serves one machine; use Postgres (database_url='postgresql://...') "
                "for several"
            )
    ex.count(_HEARTBEAT if beat else _JOIN, {"worker": worker_id, "hostname": hostname, "pid": pid})
    for name in names or ():
        ex.count(_REGISTER, {"worker": worker_id, "name": name})
    if reserved:
        ex.count(_RESERVE, {"ids": reserved, "worker": worker_id})
    if dropped:
        ex.count(_UNRESERVE, {"ids": dropped, "worker": worker_id})


_DELETE_WORKER = delete(workers).where(workers.c.id == bindparam("worker", type_=Text))


_DELETE_NAMES = delete(worker_workflows).where(
    worker_workflows.c.worker_id == bindparam("worker", type_=Text)
)


def delete_worker(ex: Executor, worker_id: str) -> None:
    """A worker process stopped: its row and its registered names go."""
    ex.count(_DELETE_WORKER, {"worker": worker_id})
    ex.count(_DELETE_NAMES, {"worker": worker_id})


def _known(name: Any) -> Any:
    """A live worker (``timeout``) has registered the workflow ``name``."""
    return exists(
        select(literal(1))
        .select_from(worker_workflows.join(workers, workers.c.id == worker_workflows.c.worker_id))
        .where(
            worker_workflows.c.name == name,
            workers.c.last_heartbeat > now() - seconds(bindparam("timeout", type_=Float)),
        )
    )


_REGISTERED = select(_known(bindparam("name", type_=Text)))


def registered(ex: Executor, name: str, worker_timeout: float) -> bool:
    """Whether a live worker has registered the workflow ``name``."""
    return bool(ex.first(_REGISTERED, {"name": name, "timeout": worker_timeout})[0])


# names of workflows queued for a while that no live worker knows: their
# messages are discarded as unregistered tasks by every worker
_UNREGISTERED = (
    select(wf.c.name)
    .where(
        wf.c.status == Status.ENQUEUED,
        wf.c.updated_at < now() - seconds(bindparam("grace", type_=Float)),
        ~_known(wf.c.name),
    )
    .distinct()
    .limit(20)
)


def unregistered(ex: Executor, worker_timeout: float, grace: float) -> list[str]:
    """Names of workflows ENQUEUED for over ``grace`` seconds that no live
    worker has registered (at most 20)."""
    rows = ex.rows(_UNREGISTERED, {"timeout": worker_timeout, "grace": grace})
    return sorted(r[0] for r in rows)


# not a status: the sweep's mark of a parked row it woke (now ENQUEUED)
WOKEN = "WOKEN"


@dataclass(frozen=True)
class Recovered:
    id: str
    name: str
    status: str
    queue: str | None


# the sweep's lock, for one transaction; a holder frozen mid-sweep (SIGSTOP,
# a partition) loses it after SWEEP_IDLE, so the others sweep again soon
SWEEP_IDLE = "2s"
_SWEEP_LOCK = select(try_lock(bindparam("lock", type_=Text)), short_idle(literal(SWEEP_IDLE)))
# a timeout: children inherit the deadline, so they expire in the same pass
_CANCEL_EXPIRED = cancel_live(wf.c.deadline <= now(), wf.c.id, wf.c.name, wf.c.status, wf.c.queue)
_ATTEMPTS = wf.c.recovery_attempts + 1
# the workers that stopped heartbeating (marked dead by a beater, silent,
# or frozen): few, so the rows they ran or prefetched are found through the
# indexes on executor_id and reserved_by, whatever the number of live rows
_DEAD = select(workers.c.id).where(
    workers.c.last_heartbeat <= now() - seconds(bindparam("timeout", type_=Float))
)


def _recover_dead(owned: Any) -> Any:
    return (
        update(wf)
        .where(wf.c.status == Status.PENDING, owned)
        .values(
            status=case(
                (
                    _ATTEMPTS > bindparam("max_attempts", type_=Integer),
                    Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED,
                ),
                else_=Status.ENQUEUED,
            ),
            executor_id=None,
            recovery_attempts=_ATTEMPTS,
            publish_count=0,
            updated_at=now(),
        )
        .returning(wf.c.id, wf.c.name, wf.c.status, wf.c.queue)
    )


def _recover_prefetched(reserved: Any) -> Any:
    return (
        update(wf)
        .where(wf.c.status == Status.ENQUEUED, reserved)
        .values(reserved_by=None, updated_at=now())
        .returning(wf.c.id, wf.c.name, wf.c.status, wf.c.queue)
    )


# every pass: the dead workers (usually none), then the rows they ran or
# prefetched, by index; and PENDING rows with no executor (freed by a kill
# marker)
_DEAD_IDS = bindparam("dead", type_=ARRAY(Text))
_RECOVER_DEAD = _recover_dead(in_list(wf.c.executor_id, _DEAD_IDS))
_RECOVER_UNOWNED = _recover_dead(wf.c.executor_id.is_(None))
_RECOVER_PREFETCHED = _recover_prefetched(in_list(wf.c.reserved_by, _DEAD_IDS))
# now and then (a full pass): also rows whose worker has no row at all (it
# was forgotten, or removed itself while a run of it was still recorded)
_RECOVER_ORPHANED = _recover_dead(~live_worker(wf.c.executor_id))
_RECOVER_ORPHANED_PREFETCHED = _recover_prefetched(
    and_(wf.c.reserved_by.is_not(None), ~live_worker(wf.c.reserved_by))
)
_UNRECEIVED = (
    wf.c.status == Status.ENQUEUED,
    wf.c.reserved_by.is_(None),
    wf.c.updated_at < now() - seconds(bindparam("grace", type_=Float)),
)
# the queues ('' for the default queue) of rows no worker has received
# within enqueued_timeout
_QUEUE = func.coalesce(wf.c.queue, "")
_UNRECEIVED_QUEUES = select(_QUEUE).where(*_UNRECEIVED).distinct().limit(100)
# when the broker cannot say how many messages a queue holds: the rows of
# that queue unreceived within enqueued_timeout, with exponential backoff
_BACKOFF = seconds(bindparam("grace", type_=Float) * pow2(least(wf.c.publish_count, 10)))
_REPUBLISH_UNRECEIVED = (
    update(wf)
    .where(
        *_UNRECEIVED,
        _QUEUE == bindparam("queue", type_=Text),
        wf.c.updated_at < now() - _BACKOFF,
    )
    .values(publish_count=wf.c.publish_count + 1, updated_at=now())
    .returning(wf.c.id, wf.c.name, wf.c.status, wf.c.queue)
)


def republish_unreceived(ex: Executor, queue: str, enqueued_timeout: float) -> list[Recovered]:
    """The broker cannot be asked about ``queue``: its rows unreceived within
    enqueued_timeout (then with exponential backoff), to publish again."""
    params = {"queue": queue, "grace": enqueued_timeout}
    return [Recovered(*r) for r in ex.rows(_REPUBLISH_UNRECEIVED, params)]


# rows of a queue that has been seen empty ``age`` seconds ago, published
# before that and still not received by any worker: their message is gone
_REPUBLISH_DRAINED = (
    update(wf)
    .where(
        *_UNRECEIVED,
        _QUEUE == bindparam("queue", type_=Text),
        wf.c.updated_at < now() - seconds(bindparam("age", type_=Float)),
    )
    .values(publish_count=wf.c.publish_count + 1, updated_at=now())
    .returning(wf.c.id, wf.c.name, wf.c.status, wf.c.queue)
)


def unreceived_queues(ex: Executor, enqueued_timeout: float) -> list[str]:
    """The queues ('': the default one) of the ENQUEUED rows that no worker
    has received within ``enqueued_timeout``."""
    return [r[0] for r in ex.rows(_UNRECEIVED_QUEUES, {"grace": enqueued_timeout})]


def republish_drained(
    ex: Executor, queue: str, age: float, enqueued_timeout: float
) -> list[Recovered]:
    """The ENQUEUED rows of ``queue`` ('': the default one) that no worker
    received, published more than ``age`` seconds ago, when the queue was
    seen empty: their message was lost (a broker flush, a crash between
    commit and publish). Marked published again, to publish."""
    params = {"queue": queue, "age": age, "grace": enqueued_timeout}
    return [Recovered(*r) for r in ex.rows(_REPUBLISH_DRAINED, params)]


# a publish of the sweep failed (the broker is down): take back the backoff
# step it took, and make the rows due again at the next sweep, so that a
# broker outage does not push their next publish hours away
_FEWER = case((wf.c.publish_count > 0, wf.c.publish_count - 1), else_=0)
_PUBLISH_FAILED = (
    update(wf)
    .where(
        in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))),
        wf.c.status == Status.ENQUEUED,
        wf.c.reserved_by.is_(None),
    )
    .values(
        publish_count=_FEWER,
        updated_at=now() - seconds(bindparam("grace", type_=Float) * pow2(least(_FEWER, 10)) + 1.0),
    )
)


def publish_failed(ex: Executor, workflow_ids: list[str], enqueued_timeout: float) -> None:
    """The sweep could not publish these ENQUEUED workflows: due again now,
    without a step of backoff."""
    ex.count(_PUBLISH_FAILED, {"ids": workflow_ids, "grace": enqueued_timeout})


_WAKE_DUE = (
    update(wf)
    .where(wf.c.status == Status.WAITING, wf.c.wake_at <= now())
    .values(**WAKE_VALUES)
    .returning(wf.c.id, wf.c.name, literal(WOKEN, Text), wf.c.queue)
)
# the readiness check (what a parked row waits for exists) is a safety net:
# the writer wakes the rows parked on its key and a park looks once more
# after its commit. It costs index lookups per parked row, so the sweep does
# it a page of parked rows at a time, in id order, round and round.
READY_PAGE = 500
_PARKED_PAGE = (
    select(wf.c.id)
    .where(wf.c.status == Status.WAITING, wf.c.id > bindparam("after", type_=Text))
    .order_by(wf.c.id)
    .limit(bindparam("n", type_=Integer))
)
_WAKE_READY = (
    update(wf)
    .where(
        in_list(wf.c.id, bindparam("ids", type_=ARRAY(Text))),
        wf.c.status == Status.WAITING,
        awaited_ready(wf),
    )
    .values(**WAKE_VALUES)
    .returning(wf.c.id, wf.c.name, literal(WOKEN, Text), wf.c.queue)
)


def wake_ready_page(ex: Executor, after: str, n: int = READY_PAGE) -> tuple[list[Recovered], str]:
    """Wake the parked rows of the next page (ids after ``after``) whose
    awaited message, event or outcome exists; (them, the cursor for the next
    page: '' to start over)."""
    ids = [r[0] for r in ex.rows(_PARKED_PAGE, {"after": after, "n": n})]
    if not ids:
        return [], ""
    woken = [Recovered(*r) for r in ex.rows(_WAKE_READY, {"ids": ids})]
    return woken, ids[-1] if len(ids) == n else ""


_FORGET_WORKERS = delete(workers).where(workers.c.last_heartbeat < now() - seconds(86400.0))
_FORGET_NAMES = delete(worker_workflows).where(
    ~exists(select(literal(1)).where(workers.c.id == worker_workflows.c.worker_id))
)


def sweep(
    ex: Executor,
    schema: str,
    worker_timeout: float,
    max_recovery_attempts: int,
    enqueued_timeout: float,
    full: bool = True,
) -> list[Recovered] | None:
    """One recovery pass; None when another process holds the sweep lock.

    First cancels the live workflows whose deadline has passed (returned
    with status CANCELLED, so that their waiters can be woken). Then returns
    the workflows to publish again: PENDING ones whose executor
    stopped heartbeating (now ENQUEUED, or MAX_RECOVERY_ATTEMPTS_EXCEEDED),
    parked (WAITING) ones whose wake time passed (now ENQUEUED, returned as
    WOKEN; those whose awaited message, event or outcome exists are found a
    page at a time by ``wake_ready_page``),
    and ENQUEUED ones prefetched by a worker that died. A message lost
    before any worker received it is found by the sweeper, which asks the
    broker: ``republish_drained`` (the queue was seen empty), or
    ``republish_unreceived`` (the broker cannot say).
    The rows of dead workers are found through the dead workers (few); a
    ``full`` pass also finds rows whose worker has no row at all.
    """
    if not ex.first(_SWEEP_LOCK, {"lock": sweep_lock(schema)})[0]:
        return None
    live = {"timeout": worker_timeout}
    found = [*ex.rows(_CANCEL_EXPIRED), *ex.rows(_WAKE_DUE)]
    recover = {**live, "max_attempts": max_recovery_attempts}
    if full:
        found += ex.rows(_RECOVER_ORPHANED, recover)
        found += ex.rows(_RECOVER_ORPHANED_PREFETCHED, live)
    else:
        found += ex.rows(_RECOVER_UNOWNED, recover)
        dead = [r[0] for r in ex.rows(_DEAD, live)]
        if dead:
            found += ex.rows(_RECOVER_DEAD, {**recover, "dead": dead})
            found += ex.rows(_RECOVER_PREFETCHED, {"dead": dead})
    if ex.count(_FORGET_WORKERS):  # workers silent for a day, and their names
        ex.count(_FORGET_NAMES)
    return [Recovered(*r) for r in found]


_LIVE_WORKERS = select(workers.c.id).where(
    in_list(workers.c.id, bindparam("ids", type_=ARRAY(Text))),
    workers.c.last_heartbeat > now() - seconds(bindparam("timeout", type_=Float)),
)


def live_workers(ex: Executor, executor_ids: list[str], worker_timeout: float) -> set[str]:
    """Those of ``executor_ids`` that heartbeated within ``worker_timeout``."""
    rows = ex.rows(_LIVE_WORKERS, {"ids": executor_ids, "timeout": worker_timeout})
    return {r[0] for r in rows}
