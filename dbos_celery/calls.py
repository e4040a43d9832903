"""durable.call: existing Celery tasks as durable steps, and durable.gather.

A call dispatches a Celery task of the app to the cluster, waits for it and
returns its result (or raises its exception). It takes two sequence numbers:

- ``seq + 1``, the dispatch record (``durable.dispatch:<task name>``),
  written by the workflow before it publishes the task. It holds the Celery
  task id, ``dbos-{workflow_id}-{seq}``, so every dispatch of this call,
  first or repeated, carries the same id. The worker that runs the task
  marks the record with its process (executor id) when the task starts.
- ``seq``, the outcome (``durable.call:<task name>``), written by the worker
  that ran the task, from Celery's ``task_success`` / ``task_failure``
  signals: no result backend is involved. Written once (a duplicate run
  writes nothing) and only where the dispatch record exists. The waiting
  workflow is woken through the notifier and polls every ``poll_interval``.

A replay returns a recorded outcome at once; finding only the dispatch
record, it waits for that same task rather than sending another. The task
is sent again, always with the same id, when no outcome is recorded and

- the process that started it stopped heartbeating (``worker_timeout``):
  the worker died mid-task, and with Celery's default early ack its message
  is gone; or
- no worker started it within ``call_redispatch_after`` seconds of its
  last dispatch (a message lost by the broker, a crash between the dispatch
  record and the publish, or prefetched by a worker that died), and then
  with exponential backoff.

So a task runs at least once, and more than once only after such a loss.

A wait longer than ``park_after`` (counted from the dispatch) parks the
workflow on the key ``t<SEP>{workflow_id}<SEP>`` (``outcome_key``): it is
ready when every dispatch record of the workflow has its outcome (a
workflow passes a call only once its outcome exists, so those without one
are the calls it waits for; a gather parks once, for all of them). The
worker that writes an outcome wakes the workflow when it is ready (the
recovery sweep also does). Its wake time keeps the re-dispatch rules: the
next re-send of a call not started, or ``call_redispatch_after`` from now
to look at the liveness of a worker running one; the woken run replays,
sends what is due (resuming the backoff from the dispatch record's age)
and parks again at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Task, bootsteps, signals
from celery.canvas import Signature
from celery.exceptions import TaskRevokedError
from kombu.exceptions import OperationalError as BrokerError
from kombu.serialization import dumps as kombu_dumps

from . import cancellation, context
from . import database as db
from .errors import (
    CallWouldDeadlockError,
    ConfigurationError,
    InvalidArgumentError,
    SerializationError,
)
from .step import Step, checkpointed, replayed, write_checkpoint
from .wakeup import key
from .workflow import Workflow

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .durable import Durable

log = logging.getLogger("dbos_celery")

CALL = db.CALL_PREFIX
DISPATCH = db.DISPATCH_PREFIX
TASK_ID_PREFIX = "dbos-"


def task_id_for(workflow_id: str, seq: int) -> str:
    """The Celery task id of the call at ``seq`` of a workflow."""
    return f"{TASK_ID_PREFIX}{workflow_id}-{seq}"


def parse_task_id(task_id: object) -> tuple[str, int] | None:
    """(workflow id, seq) of a call's task id; None for any other task id."""
    if not isinstance(task_id, str) or not task_id.startswith(TASK_ID_PREFIX):
        return None
    workflow_id, sep, seq = task_id[len(TASK_ID_PREFIX) :].rpartition("-")
    if not sep or not workflow_id or not (seq.isascii() and seq.isdigit()):
        return None
    return workflow_id, int(seq)


def outcome_key(workflow_id: str) -> str:
    """The wakeup key of the call outcomes of a workflow."""
    return key("t", workflow_id)


class TaskCall:
    """A Celery task with its arguments, sent as ``durable.call`` sends it.
    Made by ``durable.task(task, *args, **kwargs)``; pass it to
    ``durable.gather``."""

    __slots__ = ("name", "signature")

    def __init__(self, signature: Any, name: str) -> None:
        self.signature = signature
        self.name = name

    def __repr__(self) -> str:
        return f"<durable task call {self.name}>"


def task_call(d: Durable, target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> TaskCall:
    """A TaskCall from a Celery task, a signature or a registered task name,
    with ``args`` prepended and ``kwargs`` merged as ``signature.delay`` does.
    Unserializable arguments raise SerializationError here, before anything
    is written or sent."""
    if isinstance(target, TaskCall):
        if args or kwargs:
            raise InvalidArgumentError("pass arguments to durable.task(...), not with its result")
        return target
    if isinstance(target, Workflow):
        raise InvalidArgumentError(
            f"{target.name!r} is a workflow: start it as a child (wf.start(...).result()) "
            "instead of durable.call"
        )
    if isinstance(target, Step):
        raise InvalidArgumentError(f"{target.name!r} is a durable step: call it directly")
    if isinstance(target, str):
        sig = d.app.signature(target)
    elif isinstance(target, Signature):
        if target.get("subtask_type"):
            raise InvalidArgumentError(
                f"durable.call takes one task, not a {target['subtask_type']}: call each "
                "task, or durable.gather several"
            )
        sig = target
    elif isinstance(target, Task):
        sig = target.s()
    else:
        raise InvalidArgumentError(
            f"durable.call needs a Celery task, a signature or a task name, got {target!r}"
        )
    sig = sig.clone(args=tuple(args), kwargs=dict(kwargs))
    name = str(sig.task)
    serializer = sig.options.get("serializer") or d.app.conf.task_serializer
    try:
        kombu_dumps((list(sig.args), dict(sig.kwargs)), serializer=serializer)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise SerializationError(f"arguments of task {name!r}", str(exc.__cause__ or exc)) from exc
    return TaskCall(sig, name)


def call(d: Durable, target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    ctx = context.require_workflow("durable.call")
    return _run(d, ctx, [task_call(d, target, args, kwargs)])[0]


def gather(d: Durable, targets: Sequence[Any]) -> list[Any]:
    ctx = context.require_workflow("durable.gather")
    return _run(d, ctx, [task_call(d, t, (), {}) for t in targets])


@dataclass(eq=False)
class _Pending:
    """A call dispatched and not settled yet."""

    index: int
    call: TaskCall
    seq: int
    task_id: str
    backoff: float
    next_send: float | None = None  # monotonic: send again if not started by then
    started_by: str | None = None
    given_up: set[str] = field(default_factory=set)  # dead executors sent again for
    why: str | None = None  # the reason of the next send, if not the timeout


def _run(d: Durable, ctx: WorkflowContext, todo: list[TaskCall]) -> list[Any]:
    """Dispatch (or replay) the calls, wait until every one has settled, and
    return their results in order; else raise the first failure in order."""
    outcomes: list[db.StepRow | None] = [None] * len(todo)
    waiting: list[_Pending] = []
    new: list[_Pending] = []
    for i, c in enumerate(todo):
        seq = ctx.next_seq()
        ctx.next_seq()  # seq + 1: the dispatch record
        row = ctx.replay(seq, CALL + c.name)
        if row is not None:
            outcomes[i] = row
            continue
        p = _Pending(i, c, seq, task_id_for(ctx.workflow_id, seq), d.calls.redispatch_after)
        record = ctx.replay(seq + 1, DISPATCH + c.name)
        if record is None:
            new.append(p)
        elif _read_record(d, p, record.output):
            waiting.append(p)
        else:  # copied by a fork from another workflow: never sent under this id
            p.next_send, p.why = 0.0, "its dispatch record was copied by a fork"
            waiting.append(p)
    if waiting or new:
        _dispatch_and_wait(d, ctx, waiting, new, outcomes)
    results: list[Any] = []
    failure: Exception | None = None
    for row in outcomes:
        assert row is not None
        try:
            results.append(replayed(d, row))
        except Exception as exc:
            failure = failure or exc
            results.append(None)
    if failure is not None:
        raise failure
    return results


def _read_record(d: Durable, p: _Pending, data: bytes | None) -> bool:
    """Take the start marker from a dispatch record; False when the record
    is not of this call's task id (a forked workflow's copy)."""
    info = d.serializer.loads(data)
    if not isinstance(info, dict) or info.get("task_id") != p.task_id:
        return False
    started_by = info.get("started_by")
    p.started_by = str(started_by) if started_by else None
    return True


def _dispatch_and_wait(
    d: Durable,
    ctx: WorkflowContext,
    replayed_: list[_Pending],
    new: list[_Pending],
    outcomes: list[db.StepRow | None],
) -> None:
    """Record and send the new calls, then wait for every outcome: woken by
    the notifier (registered before anything is sent, so that no wakeup is
    missed), polling every ``poll_interval``, and sending again the calls
    whose task was lost."""
    cancellation.check(d, ctx)
    # with parking on, the wait frees the slot after park_after: no deadlock
    for p in new if d.park_after is None else ():
        queue = d.calls.deadlock_queue(p.call)
        if queue is not None:
            raise CallWouldDeadlockError(p.call.name, queue)
    wid = ctx.workflow_id
    waiting = replayed_ + new
    lo = min(p.seq for p in waiting)
    hi = max(p.seq for p in waiting) + 2
    d.notifier.start()
    with ExitStack() as stack:
        waiter = stack.enter_context(d.notifier.waiters.register(outcome_key(wid)))
        stack.enter_context(cancellation.watch(d, ctx, waiter))
        if new:
            records = [
                (p.seq + 1, DISPATCH + p.call.name, d.serializer.dumps({"task_id": p.task_id}))
                for p in new
            ]

            def tx(ex: db.Executor) -> None:
                for seq, name, data in records:
                    write_checkpoint(ex, ctx, seq, name, data)

            checkpointed(d, ctx, tx, transaction=len(records) > 1)
            for p in new:
                d.calls.send(ctx, p, None)
        if not replayed_:  # nothing can be recorded before the first wakeup
            first_wait = d.poll_interval if d.park_after is None else d.park_after
            waiter.wait(cancellation.bound(ctx, min(d.poll_interval, first_wait)))
            cancellation.check(d, ctx)
        next_check = 0.0
        parks_at: float | None = None
        first = True
        while True:
            rows = {r.seq: r for r in d.db.now(db.call_rows, wid, lo, hi)}
            now = time.monotonic()
            still: list[_Pending] = []
            for p in waiting:
                out = rows.get(p.seq)
                if out is not None:
                    outcomes[p.index] = db.StepRow(out.seq, out.name, out.output, out.error)
                    continue
                record = rows.get(p.seq + 1)
                if record is not None and _read_record(d, p, record.output):
                    if p.next_send is None:  # replayed: counted from the dispatch
                        p.next_send, p.backoff = _resumed(record.age, p.backoff, now)
                still.append(p)
            waiting = still
            if not waiting:
                return
            if now >= next_check:
                d.calls.send_lost(ctx, waiting, now)
                next_check = now + d.poll_interval
            if first:  # the wait parks park_after seconds after the dispatch
                first = False
                ages = [rows[p.seq + 1].age for p in waiting if p.seq + 1 in rows]
                if d.park_after is not None:
                    parks_at = now + max(0.0, d.park_after - max(ages, default=0.0))
            wake_at = _check_at(d, waiting, now)
            if cancellation.should_park(d, parks_at, wake_at - time.time()):
                # raises unless every outcome is written by now
                cancellation.park(d, ctx, outcome_key(wid), wake_at)
                parks_at = cancellation.parks_at(d)
                continue  # all settled meanwhile: read them
            wait = d.poll_interval
            if parks_at is not None:
                wait = max(0.0, min(wait, parks_at - time.monotonic()))
            waiter.wait(cancellation.bound(ctx, wait))
            cancellation.check(d, ctx)


def _resumed(age: float, base: float, now: float) -> tuple[float, float]:
    """(next send, backoff) of a replayed call not started ``age`` seconds
    after its dispatch. One run sends it again at ``(2**n - 1) * base``
    seconds (n = 1, 2, ...: the backoff doubles at each send); a replay
    resumes that schedule, so a call wait that parks and wakes for each
    re-send keeps the exponential backoff. Past a due send: now."""
    if age < base:
        return now - age + base, base
    backoff = base
    while backoff < 1800.0 and (4 * backoff - base) <= age:
        backoff *= 2  # the send due at (2 * backoff - base) has come too
    return now, backoff


def _check_at(d: Durable, waiting: list[_Pending], now: float) -> float:
    """The epoch time by which a parked call wait must run again to keep the
    re-dispatch rules: the earliest time a call not started yet is due to be
    sent again, or, for a call a worker started, ``call_redispatch_after``
    from now (to see whether that worker is still alive)."""
    soonest = min(
        now + d.calls.redispatch_after
        if p.started_by and p.started_by not in p.given_up
        else (p.next_send if p.next_send is not None else now + p.backoff)
        for p in waiting
    )
    return time.time() + (soonest - now)


@dataclass(frozen=True)
class WorkerFacts:
    """What a worker process consumes and how many tasks it runs at once."""

    slots: int
    queues: frozenset[str]


class Calls:
    """The calls of one Durable: sending and re-sending tasks on the
    workflow side; on the task side, Celery signal receivers that write the
    start marker and the outcome of the tasks they recognise by id."""

    def __init__(self, durable: Durable, redispatch_after: float) -> None:
        if not redispatch_after > 0:
            raise ConfigurationError("call_redispatch_after must be > 0 (seconds)")
        self.durable = durable
        self.redispatch_after = float(redispatch_after)
        # set in a worker's main process before its pool forks
        self.worker: WorkerFacts | None = None
        signals.task_prerun.connect(self._on_prerun)
        signals.task_success.connect(self._on_success)
        signals.task_failure.connect(self._on_failure)
        signals.task_revoked.connect(self._on_revoked)
        durable.app.steps["worker"].add(_facts_bootstep(self))

    # --- workflow side --------------------------------------------------------

    def deadlock_queue(self, c: TaskCall) -> str | None:
        """The queue a call would wait on forever: the one its task is routed
        to, when this worker consumes it with a single slot."""
        facts = self.worker
        if facts is None or facts.slots != 1:
            return None
        app = self.durable.app
        options = dict(c.signature.options)
        task = app.tasks.get(c.name)
        if "queue" not in options and getattr(task, "queue", None):
            options["queue"] = task.queue
        try:
            route = app.amqp.router.route(options, c.name, c.signature.args, c.signature.kwargs)
        except Exception:
            return None  # a router that fails here fails at the publish too
        queue = route.get("queue")
        name = getattr(queue, "name", queue)
        return name if isinstance(name, str) and name in facts.queues else None

    def send(
        self, ctx: WorkflowContext, p: _Pending, reason: str | None, back_off: bool = False
    ) -> None:
        """Publish the task of a call with its fixed id (``back_off``: double
        the wait for its start). A broker failure is logged and retried after
        ``poll_interval``; nothing is recorded."""
        now = time.monotonic()
        wid = ctx.workflow_id
        if reason is not None:
            log.warning(
                "durable.call %s (task id %s) of workflow %s: %s; sending it again",
                p.call.name, p.task_id, wid, reason, extra={"workflow_id": wid},
            )  # fmt: skip
        try:
            p.call.signature.apply_async(task_id=p.task_id)
        except (BrokerError, OSError) as exc:
            log.warning("durable.call %s of workflow %s: publish failed (%s); retrying",
                        p.call.name, wid, exc, extra={"workflow_id": wid})  # fmt: skip
            p.next_send, p.why = now + self.durable.poll_interval, "its publish failed"
            return
        if back_off:
            p.backoff = min(p.backoff * 2, 3600.0)
        p.next_send, p.why = now + p.backoff, None

    def send_lost(self, ctx: WorkflowContext, waiting: list[_Pending], now: float) -> None:
        """Send again the calls whose task was lost (see the module docs)."""
        d = self.durable
        started = sorted(
            {p.started_by for p in waiting if p.started_by and p.started_by not in p.given_up}
        )
        live = d.db.now(db.live_workers, started, d.worker_timeout) if started else set()
        for p in waiting:
            if p.started_by and p.started_by not in p.given_up:
                if p.started_by not in live:  # it died mid-task
                    p.given_up.add(p.started_by)
                    self.send(ctx, p, f"the worker process that ran it ({p.started_by}) is gone")
            elif p.next_send is not None and now >= p.next_send:
                if p.why is not None:
                    self.send(ctx, p, p.why)
                else:  # lost before any worker started it, or still queued
                    reason = f"no worker started it within {p.backoff:g} s"
                    self.send(ctx, p, reason, back_off=True)

    # --- worker side ----------------------------------------------------------

    def note_worker(self, worker: Any) -> None:
        pool = getattr(worker, "pool_cls", None)
        solo = str(getattr(pool, "__module__", "")).endswith(".solo")
        slots = 1 if solo else int(getattr(worker, "concurrency", 0) or 0)
        queues = self.durable.app.amqp.queues.consume_from or {}
        self.worker = WorkerFacts(slots, frozenset(str(q) for q in queues))

    def _call_of(self, sender: Any, task_id: Any) -> tuple[str, int] | None:
        if getattr(sender, "app", None) is not self.durable.app:
            return None
        return parse_task_id(task_id)

    def _on_prerun(self, sender: Any = None, task_id: Any = None, **_: Any) -> None:
        got = self._call_of(sender, task_id)
        if got is None:
            return
        d = self.durable
        try:
            runtime = d.runtime()
            runtime.start()  # its heartbeat tells the workflow this task is alive
            marker = d.serializer.dumps({"task_id": task_id, "started_by": runtime.executor_id})
            d.db.now(db.mark_call_started, got[0], got[1], marker)
        except Exception as exc:
            log.warning("task %s: could not mark its durable.call started (%s)", task_id, exc)

    def _on_success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        request = getattr(sender, "request", None)
        task_id = getattr(request, "id", None)
        got = self._call_of(sender, task_id)
        if got is None:
            return
        ser = self.durable.serializer
        try:
            output, error = ser.dumps(result, f"result of task {sender.name!r}"), None
        except SerializationError as exc:
            output, error = None, ser.dumps_error(exc)
        self._write(got, output, error)

    def _on_failure(
        self, sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any
    ) -> None:
        got = self._call_of(sender, task_id)
        if got is None or not isinstance(exception, BaseException):
            return
        self._write(got, None, self.durable.serializer.dumps_error(exception))

    def _on_revoked(
        self, sender: Any = None, request: Any = None, expired: bool = False, **_: Any
    ) -> None:
        got = self._call_of(sender, getattr(request, "id", None))
        if got is None:
            return
        exc = TaskRevokedError("expired" if expired else "revoked")
        self._write(got, None, self.durable.serializer.dumps_error(exc))

    def _write(self, call_: tuple[str, int], output: bytes | None, error: bytes | None) -> None:
        """Record an outcome; if the database is down, keep retrying in the
        background (as long as this process lives: if it dies, the waiting
        workflow sees its heartbeat stop and sends the task again)."""
        d = self.durable
        workflow_id, seq = call_
        try:
            written = d.db.now(db.insert_call_outcome, workflow_id, seq, output, error)
        except Exception as exc:
            log.error("could not record the outcome of durable.call %s of workflow %s (%s); "
                      "retrying in the background", seq, workflow_id, exc,
                      extra={"workflow_id": workflow_id})  # fmt: skip
            threading.Thread(
                target=self._write_later, args=(call_, output, error), daemon=True
            ).start()
            return
        if written:
            d.notifier.notify(outcome_key(workflow_id))
            self._wake_parked(workflow_id)

    def _wake_parked(self, workflow_id: str) -> None:
        """Best effort, after an outcome committed: publish the workflow if it
        is parked on its calls and all of them are settled now (the sweep
        wakes it if this fails or runs before the park committed)."""
        d = self.durable
        try:
            for wid, name in d.db.now(db.wake_if_ready, workflow_id):
                d.publish(wid, name)
        except Exception as exc:
            log.warning("could not wake workflow %s parked on its calls (%s); the sweep will",
                        workflow_id, exc, extra={"workflow_id": workflow_id})  # fmt: skip

    def _write_later(
        self, call_: tuple[str, int], output: bytes | None, error: bytes | None
    ) -> None:
        delay = 1.0
        while True:
            time.sleep(delay)
            try:
                written = self.durable.db.now(db.insert_call_outcome, *call_, output, error)
            except Exception:
                delay = min(delay * 2, 30.0)
                continue
            if written:
                self.durable.notifier.notify(outcome_key(call_[0]))
                self._wake_parked(call_[0])
            return


def _facts_bootstep(calls: Calls) -> type[bootsteps.Step]:
    """A worker bootstep that notes, before the pool forks, the queues the
    worker consumes and its concurrency (for CallWouldDeadlockError)."""

    class DurableCallsWorker(bootsteps.Step):  # type: ignore[misc]
        name = "dbos_celery_calls"

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            calls.note_worker(parent)

    return DurableCallsWorker
