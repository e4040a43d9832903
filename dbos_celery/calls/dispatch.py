"""The workflow side of durable.call and durable.gather: record the dispatch,
send the task, wait for the outcomes (parking when long), send again what
was lost. See the package's docstring for the rules."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.canvas import Signature
from kombu.exceptions import OperationalError as BrokerError
from kombu.serialization import dumps as kombu_dumps

from .. import cancellation, context, parking, tracing
from ..checkpoint import checkpointed, replayed, write_checkpoint
from ..errors import CallWouldDeadlockError, InvalidArgumentError, SerializationError
from ..keys import CALL_PREFIX, DISPATCH_PREFIX, calls_key, task_id_for
from ..routing import queue_of
from ..step import Step
from ..store import steps, workers
from ..store.common import StepRow
from ..waiting import Wait, wait_for
from ..workflow import Workflow

if TYPE_CHECKING:
    from celery import Celery

    from ..context import WorkflowContext
    from ..services import Services
    from ..store.engine import Executor

log = logging.getLogger("dbos_celery")


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


@dataclass(frozen=True)
class WorkerFacts:
    """What a worker process consumes and how many tasks it runs at once."""

    slots: int
    queues: frozenset[str]


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


class Dispatcher:
    """Sends the calls of one Durable's workflows and waits for them."""

    def __init__(self, sv: Services, app: Celery) -> None:
        self.sv = sv
        self.app = app
        # set in a worker's main process before its pool forks
        self.worker: WorkerFacts | None = None

    @property
    def redispatch_after(self) -> float:
        """``call_redispatch_after``, as the settings say now."""
        return float(self.sv.settings.call_redispatch_after)

    # --- building calls -------------------------------------------------------

    def task_call(self, target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> TaskCall:
        """A TaskCall from a Celery task, a signature or a registered task
        name, with ``args`` prepended and ``kwargs`` merged as
        ``signature.delay`` does. Unserializable arguments raise
        SerializationError here, before anything is written or sent."""
        if isinstance(target, TaskCall):
            if args or kwargs:
                raise InvalidArgumentError(
                    "pass arguments to durable.task(...), not with its result"
                )
            return target
        sig = self._signature(target).clone(args=tuple(args), kwargs=dict(kwargs))
        name = str(sig.task)
        serializer = sig.options.get("serializer") or self.app.conf.task_serializer
        try:
            kombu_dumps((list(sig.args), dict(sig.kwargs)), serializer=serializer)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise SerializationError(
                f"arguments of task {name!r}", str(exc.__cause__ or exc)
            ) from exc
        return TaskCall(sig, name)

    def _signature(self, target: Any) -> Any:
        if isinstance(target, Workflow):
            raise InvalidArgumentError(
                f"{target.name!r} is a workflow: start it as a child (wf.start(...).result()) "
                "instead of durable.call"
            )
        if isinstance(target, Step):
            raise InvalidArgumentError(f"{target.name!r} is a durable step: call it directly")
        if isinstance(target, str):
            return self.app.signature(target)
        if isinstance(target, Signature):
            if target.get("subtask_type"):
                raise InvalidArgumentError(
                    f"durable.call takes one task, not a {target['subtask_type']}: call each "
                    "task, or durable.gather several"
                )
            return target
        if isinstance(target, Task):
            return target.s()
        raise InvalidArgumentError(
            f"durable.call needs a Celery task, a signature or a task name, got {target!r}"
        )

    # --- running them ---------------------------------------------------------

    def call(self, target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        ctx = context.require_workflow("durable.call")
        call = self.task_call(target, args, kwargs)
        with tracing.span(f"dbos_celery.call {call.name}", {tracing.WORKFLOW_ID: ctx.workflow_id}):
            return self.run(ctx, [call])[0]

    def gather(self, targets: Sequence[Any]) -> list[Any]:
        ctx = context.require_workflow("durable.gather")
        calls = [self.task_call(t, (), {}) for t in targets]
        attributes = {tracing.WORKFLOW_ID: ctx.workflow_id, "dbos_celery.calls": len(calls)}
        with tracing.span("dbos_celery.gather", attributes):
            return self.run(ctx, calls)

    def run(self, ctx: WorkflowContext, todo: list[TaskCall]) -> list[Any]:
        """Dispatch (or replay) the calls, wait until every one has settled,
        and return their results in order; else raise the first failure in
        order."""
        outcomes: list[StepRow | None] = [None] * len(todo)
        waiting: list[_Pending] = []
        new: list[_Pending] = []
        for i, c in enumerate(todo):
            seq = ctx.next_seq()
            ctx.next_seq()  # seq + 1: the dispatch record
            row = ctx.replay(seq, CALL_PREFIX + c.name)
            if row is not None:
                outcomes[i] = row
                continue
            p = _Pending(i, c, seq, task_id_for(ctx.workflow_id, seq), self.redispatch_after)
            record = ctx.replay(seq + 1, DISPATCH_PREFIX + c.name)
            if record is None:
                new.append(p)
            elif self.read_record(p, record.output):
                waiting.append(p)
            else:  # copied by a fork from another workflow: never sent under this id
                p.next_send, p.why = 0.0, "its dispatch record was copied by a fork"
                waiting.append(p)
        if waiting or new:
            self._dispatch_and_wait(ctx, waiting, new, outcomes)
        return self._results(outcomes)

    def _results(self, outcomes: list[StepRow | None]) -> list[Any]:
        results: list[Any] = []
        failure: Exception | None = None
        for row in outcomes:
            assert row is not None
            try:
                results.append(replayed(self.sv.codec, row))
            except Exception as exc:
                failure = failure or exc
                results.append(None)
        if failure is not None:
            raise failure
        return results

    def read_record(self, p: _Pending, data: bytes | None) -> bool:
        """Take the start marker from a dispatch record; False when the record
        is not of this call's task id (a forked workflow's copy)."""
        info = self.sv.codec.loads(data)
        if not isinstance(info, dict) or info.get("task_id") != p.task_id:
            return False
        started_by = info.get("started_by")
        p.started_by = str(started_by) if started_by else None
        return True

    def _dispatch_and_wait(
        self,
        ctx: WorkflowContext,
        replayed_: list[_Pending],
        new: list[_Pending],
        outcomes: list[StepRow | None],
    ) -> None:
        """Record and send the new calls, then wait for every outcome: woken
        by the notifier (registered before anything is sent, so that no
        wakeup is missed), polling every ``poll_interval``, and sending again
        the calls whose task was lost."""
        sv = self.sv
        cancellation.check(sv, ctx)
        # with parking on, the wait frees the slot after park_after: no deadlock
        for p in new if sv.settings.park_after is None else ():
            queue = self.deadlock_queue(p.call)
            if queue is not None:
                raise CallWouldDeadlockError(p.call.name, queue)
        wait = _CallsWait(self, ctx, replayed_ + new, outcomes, fresh=not replayed_)
        if new:  # once the wait listens, so that no outcome's hint is missed
            wait.wait.begin = lambda: self._dispatch(ctx, new)
        got = wait_for(sv, ctx, wait.wait)
        assert got is not None  # a calls wait has no deadline

    def _dispatch(self, ctx: WorkflowContext, new: list[_Pending]) -> None:
        """Commit the dispatch records of the new calls, then send them."""
        records = [
            (p.seq + 1, DISPATCH_PREFIX + p.call.name, self.sv.codec.dumps({"task_id": p.task_id}))
            for p in new
        ]

        def tx(ex: Executor) -> None:
            for seq, name, data in records:
                write_checkpoint(ex, ctx, seq, name, data)

        checkpointed(self.sv, ctx, tx, transaction=len(records) > 1)
        for p in new:
            self.send(ctx, p, None)

    def deadlock_queue(self, c: TaskCall) -> str | None:
        """The queue a call would wait on forever: the one its task is routed
        to, when this worker consumes it with a single slot."""
        facts = self.worker
        if facts is None or facts.slots != 1:
            return None
        sig = c.signature
        queue = queue_of(self.app, c.name, dict(sig.options), sig.args, sig.kwargs)
        return queue if queue in facts.queues else None

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
            p.next_send, p.why = now + self.sv.settings.poll_interval, "its publish failed"
            return
        if back_off:
            p.backoff = min(p.backoff * 2, 3600.0)
        p.next_send, p.why = now + p.backoff, None

    def send_lost(self, ctx: WorkflowContext, waiting: list[_Pending], now: float) -> None:
        """Send again the calls whose task was lost (see the package docs)."""
        started = sorted(
            {p.started_by for p in waiting if p.started_by and p.started_by not in p.given_up}
        )
        timeout = self.sv.settings.worker_timeout
        live = self.sv.store.now(workers.live_workers, started, timeout) if started else set()
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

    def note_worker(self, worker: Any) -> WorkerFacts:
        """A worker's main process, before its pool forks: what it consumes
        and its concurrency (for CallWouldDeadlockError)."""
        pool = getattr(worker, "pool_cls", None)
        solo = str(getattr(pool, "__module__", "")).endswith(".solo")
        slots = 1 if solo else int(getattr(worker, "concurrency", 0) or 0)
        queues = self.app.amqp.queues.consume_from or {}
        self.worker = WorkerFacts(slots, frozenset(str(q) for q in queues))
        return self.worker


class _CallsWait:
    """The wait for the outcomes of dispatched calls, as a :class:`Wait`:
    its check reads the calls' checkpoints, records the outcomes found, sends
    again the lost ones, and is done when every call has settled. Parked, it
    wakes when all have settled or when the next re-dispatch check is due."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        ctx: WorkflowContext,
        waiting: list[_Pending],
        outcomes: list[StepRow | None],
        fresh: bool,
    ) -> None:
        self.d = dispatcher
        self.ctx = ctx
        self.waiting = waiting
        self.outcomes = outcomes
        self.lo = min(p.seq for p in waiting)
        self.hi = max(p.seq for p in waiting) + 2
        self.next_check = 0.0
        self.first = True
        # nothing can be recorded before the first wakeup of fresh calls
        self.skip = fresh
        settings = dispatcher.sv.settings
        self.wait: Wait[bool] = Wait(
            calls_key(ctx.workflow_id), self.check, wake_at=self.wake_at,
            parks_at=parking.parks_at(settings) if fresh else None,
            poll=settings.poll_interval,
        )  # fmt: skip

    def check(self) -> bool | None:
        if self.skip:
            self.skip = False
            return None
        sv = self.d.sv
        rows = {r.seq: r for r in sv.store.now(steps.call_rows, self.ctx.workflow_id,
                                                self.lo, self.hi)}  # fmt: skip
        now = time.monotonic()
        still: list[_Pending] = []
        for p in self.waiting:
            out = rows.get(p.seq)
            if out is not None:
                self.outcomes[p.index] = StepRow(out.seq, out.name, out.output, out.error)
                continue
            record = rows.get(p.seq + 1)
            if record is not None and self.d.read_record(p, record.output):
                if p.next_send is None:  # replayed: counted from the dispatch
                    p.next_send, p.backoff = _resumed(record.age, p.backoff, now)
            still.append(p)
        self.waiting = still
        if not still:
            return True
        if now >= self.next_check:
            self.d.send_lost(self.ctx, still, now)
            self.next_check = now + sv.settings.poll_interval
        if self.first:  # the wait parks park_after seconds after the dispatch
            self.first = False
            after = sv.settings.park_after
            if after is not None:
                ages = [rows[p.seq + 1].age for p in still if p.seq + 1 in rows]
                self.wait.parks_at = now + max(0.0, after - max(ages, default=0.0))
        return None

    def wake_at(self, _deadline: float | None) -> float:
        """The epoch time by which a parked call wait must run again to keep
        the re-dispatch rules: the earliest time a call not started yet is
        due to be sent again, or, for a call a worker started,
        ``call_redispatch_after`` from now (to see whether that worker is
        still alive)."""
        now = time.monotonic()
        soonest = min(
            now + self.d.redispatch_after
            if p.started_by and p.started_by not in p.given_up
            else (p.next_send if p.next_send is not None else now + p.backoff)
            for p in self.waiting
        )
        return time.time() + (soonest - now)


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
