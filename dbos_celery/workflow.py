"""Running and replaying a workflow; handles; status.

A workflow runs as the body of a Celery task whose message carries only the
workflow id. The worker claims the row (the lease) and reads every recorded
checkpoint in one round trip, then runs the function; each durable call
inside it replays from those checkpoints until it reaches new ground.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import cancellation, context
from . import database as db
from .context import WorkflowContext
from .errors import (
    ConflictingWorkflowIdError,
    DatabaseUnavailableError,
    LeaseLostError,
    NonExistentWorkflowError,
    ResultTimeoutError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotRegisteredError,
)
from .step import checkpointed, durable_deadline, record, replayed, write_checkpoint
from .validation import check_id, check_timeout

if TYPE_CHECKING:
    from celery import Task

    from .durable import Durable
    from .recovery import ProcessRuntime

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("dbos_celery")
RESULT = "durable.result"
DEADLINE = "durable.deadline"  # as recv's (messaging.DEADLINE)


@dataclass(frozen=True)
class WorkflowStatus:
    workflow_id: str
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    recovery_attempts: int
    executor_id: str | None
    parent_id: str | None
    error: str | None
    deadline: datetime | None = None  # set by a timeout; past it, cancelled

    @classmethod
    def from_row(cls, durable: Durable, row: db.WorkflowRow) -> WorkflowStatus:
        error = None
        if row.error is not None:
            exc = durable.serializer.loads_error(row.error)
            error = f"{type(exc).__name__}: {exc}"
        return cls(
            row.id, row.name, row.status, row.created_at, row.updated_at,
            row.recovery_attempts, row.executor_id, row.parent_id, error, row.deadline,
        )  # fmt: skip


@dataclass(frozen=True)
class StepInfo:
    """One recorded checkpoint of a workflow: a step, send, recv, sleep..."""

    seq: int
    name: str
    output: Any
    error: str | None

    @classmethod
    def from_row(cls, durable: Durable, row: db.StepRow) -> StepInfo:
        ser = durable.serializer
        error = None
        if row.error is not None:
            exc = ser.loads_error(row.error)
            error = f"{type(exc).__name__}: {exc}"
        return cls(row.seq, row.name, ser.loads(row.output), error)


class WorkflowHandle(Generic[R]):
    """A reference to a workflow by id, from any process."""

    def __init__(self, durable: Durable, workflow_id: str) -> None:
        self.durable = durable
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    def status(self) -> WorkflowStatus:
        row = self.durable.db.now(db.get_workflow, self.workflow_id)
        if row is None:
            raise NonExistentWorkflowError(self.workflow_id)
        return WorkflowStatus.from_row(self.durable, row)

    def result(self, timeout: float | None = None) -> R:
        """The workflow's output, or its error raised. Inside a workflow the
        outcome is checkpointed, so a replay does not wait again, and so is
        the deadline of ``timeout`` (a replay waits only for the time that
        was left; a timeout is recorded and raised again on replay)."""
        check_timeout(timeout, allow_none=True)
        ctx = context.current()
        if ctx is None or ctx.in_step:
            return self._wait(timeout)
        seq = ctx.next_seq()
        # a second number, for the durable deadline, only with a timeout
        deadline_seq = None if timeout is None else ctx.next_seq()
        row = ctx.replay(seq, RESULT)
        if row is not None:
            return replayed(self.durable, row)  # type: ignore[no-any-return]
        ser = self.durable.serializer
        try:
            out = self._wait(timeout, ctx, deadline_seq)
        except DatabaseUnavailableError:
            raise  # not the child's outcome: the run is handed back and replayed
        except Exception as exc:  # a ResultTimeoutError too: its deadline is durable
            record(self.durable, ctx, seq, RESULT, None, ser.dumps_error(exc))
            raise
        record(self.durable, ctx, seq, RESULT, ser.dumps(out))
        return out

    def _wait(
        self,
        timeout: float | None,
        ctx: WorkflowContext | None = None,
        deadline_seq: int | None = None,
    ) -> R:
        """Wait for the outcome; inside a workflow (``ctx``) also stop when
        that workflow is cancelled or passes its deadline, and park when the
        wait is long. With ``deadline_seq`` the deadline of ``timeout`` is
        checkpointed there (epoch time) the first time the wait must wait."""
        d = self.durable
        # monotonic outside a workflow; epoch (durable) inside one
        clock = time.monotonic if deadline_seq is None else time.time
        deadline = None if timeout is None else clock() + timeout
        cancellation.check(d, ctx)
        d.notifier.start()
        k = d.done_key(self.workflow_id)
        with ExitStack() as stack:
            waiter = stack.enter_context(d.notifier.waiters.register(k))
            if ctx is not None:
                stack.enter_context(cancellation.watch(d, ctx, waiter))
            parks_at = cancellation.parks_at(d) if ctx is not None else None
            while True:
                got = d.db.now(db.get_status, self.workflow_id)
                if got is None:
                    raise NonExistentWorkflowError(self.workflow_id)
                status, output, error = got
                if status == db.SUCCESS:
                    return d.serializer.loads(output)  # type: ignore[no-any-return]
                if status == db.ERROR and error is not None:
                    raise d.serializer.loads_error(error)
                if status in db.FINAL_STATUSES:
                    raise WorkflowFailedError(self.workflow_id, status)
                if ctx is not None and deadline_seq is not None:
                    assert timeout is not None
                    deadline = durable_deadline(d, ctx, deadline_seq, DEADLINE, timeout)
                    deadline_seq = None  # read or recorded once
                wait = d.poll_interval
                remaining = None
                if deadline is not None:
                    remaining = deadline - clock()
                    if remaining <= 0:
                        raise ResultTimeoutError(self.workflow_id, timeout or 0.0)
                    wait = min(wait, remaining)
                if ctx is not None and cancellation.should_park(d, parks_at, remaining):
                    cancellation.park(d, ctx, k, deadline)  # raises; epoch in a workflow
                    parks_at = cancellation.parks_at(d)  # finished meanwhile: read it
                    continue
                if parks_at is not None:
                    wait = max(0.0, min(wait, parks_at - time.monotonic()))
                waiter.wait(cancellation.bound(ctx, wait))
                cancellation.check(d, ctx)


class Workflow(Generic[P, R]):
    """A durable workflow function, registered as a Celery task."""

    def __init__(
        self,
        durable: Durable,
        fn: Callable[P, R],
        name: str,
        task: Task,
        timeout: float | None = None,
    ) -> None:
        check_timeout(timeout, allow_none=True)
        self.durable = durable
        self.fn = fn
        self.name = name
        self.task = task
        self.timeout = timeout
        self.__name__ = getattr(fn, "__name__", name)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"

    def start(
        self,
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]:
        """Commit the workflow row, then publish its Celery message.

        Idempotent on ``workflow_id``: starting an existing id returns a
        handle to that workflow and runs nothing. Inside a workflow the start
        is checkpointed and the child's id defaults to ``{parent_id}-{seq}``.

        ``timeout`` (seconds; default: the decorator's ``timeout``) sets a
        deadline counted from now, queueing included: past it the workflow is
        cancelled, and so are its children (a child inherits its parent's
        deadline when that is earlier). Like ``workflow_id``, the keyword
        belongs to ``start``: pass a workflow argument named ``timeout``
        positionally.
        """
        check_timeout(timeout, allow_none=True)
        timeout = self.timeout if timeout is None else timeout
        workflow_id, inserted = self._create(args, kwargs, workflow_id, timeout)
        if inserted:
            self.durable.publish(workflow_id, self.name)
        return WorkflowHandle(self.durable, workflow_id)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the workflow durably in this thread and return its result."""
        workflow_id, _ = self._create(args, kwargs, None, self.timeout)
        execute(self.durable, workflow_id)
        return WorkflowHandle[R](self.durable, workflow_id).result()

    def _create(
        self, args: Any, kwargs: dict[str, Any], workflow_id: str | None, timeout: float | None
    ) -> tuple[str, bool]:
        d = self.durable
        if workflow_id is not None:
            check_id(workflow_id, "workflow_id")
        inputs = d.serializer.dumps(
            {"args": list(args), "kwargs": kwargs}, f"inputs of workflow {self.name!r}"
        )
        ctx = context.current()
        if ctx is None or ctx.in_step:
            workflow_id = workflow_id or str(uuid.uuid4())
            return workflow_id, d.db.now(self._insert, workflow_id, inputs, None, timeout)
        # a child workflow: its start is a checkpoint of the parent
        seq = ctx.next_seq()
        step_name = f"durable.start:{self.name}"
        row = ctx.replay(seq, step_name)
        if row is not None:
            return str(d.serializer.loads(row.output)), False
        child_id = workflow_id or f"{ctx.workflow_id}-{seq}"
        parent = ctx.workflow_id
        id_bytes = d.serializer.dumps(child_id)

        def tx(ex: db.Executor) -> bool:
            inserted = self._insert(ex, child_id, inputs, parent, timeout, ctx.deadline)
            write_checkpoint(ex, ctx, seq, step_name, id_bytes)
            return inserted

        return child_id, checkpointed(d, ctx, tx, transaction=True)

    def _insert(
        self,
        ex: db.Executor,
        workflow_id: str,
        inputs: bytes,
        parent: str | None,
        timeout: float | None = None,
        inherited_deadline: float | None = None,
    ) -> bool:
        """Insert the row; an existing row of the same workflow is fine
        (idempotent start), one of another workflow is an error."""
        if db.insert_workflow(
            ex, workflow_id, self.name, inputs, parent, timeout, inherited_deadline
        ):
            return True
        existing = db.workflow_name(ex, workflow_id)
        if existing is not None and existing != self.name:
            raise ConflictingWorkflowIdError(workflow_id, existing, self.name)
        return False


def execute(durable: Durable, workflow_id: str) -> None:
    """Claim and run (or replay) one workflow; the body of its Celery task.

    A delivery that finds the workflow running elsewhere or finished is a
    duplicate: it returns at once and the broker message is acknowledged.
    """
    d = durable
    runtime = d.runtime()
    runtime.start()
    try:
        claimed = d.db.now(db.claim_workflow, workflow_id, runtime.executor_id, d.worker_timeout)
    except DatabaseUnavailableError as exc:
        # the claim may have committed before the connection dropped: then
        # only this live process could give the lease back
        _hand_back(runtime, workflow_id, None, exc)
        return
    if claimed is None:
        log.info("workflow %s is running elsewhere or finished; delivery dropped",
                 workflow_id, extra={"workflow_id": workflow_id})  # fmt: skip
        return
    row, steps = claimed
    executor = runtime.executor_id
    if row.recovery_attempts > d.max_recovery_attempts:
        d.db.now(db.finish_workflow, workflow_id, executor,
                 db.MAX_RECOVERY_ATTEMPTS_EXCEEDED, None, None)  # fmt: skip
        d.notifier.notify(d.done_key(workflow_id))
        return
    wf = d.workflows.get(row.name)
    if wf is None:
        d.db.now(db.release_workflow, workflow_id, executor)
        raise WorkflowNotRegisteredError(row.name)
    ctx = WorkflowContext(workflow_id, executor, {s.seq: s for s in steps})
    if row.deadline is not None:
        ctx.deadline = row.deadline.timestamp()
    token = context.enter(ctx)
    runtime.track(ctx)
    status, output, error = db.SUCCESS, None, None
    try:
        cancellation.check(d, ctx)  # a deadline that passed while it was queued
        inputs = d.serializer.loads(row.inputs)
        result = wf.fn(*inputs["args"], **inputs["kwargs"])
        output = d.serializer.dumps(result, f"output of workflow {row.name!r}")
    except cancellation._Parked:
        log.debug("workflow %s parked; its slot is free", workflow_id,
                  extra={"workflow_id": workflow_id})  # fmt: skip
        return
    except WorkflowCancelledError:
        # the status is CANCELLED already (set by the canceller or the timeout)
        log.info("workflow %s was cancelled; stopped", workflow_id,
                 extra={"workflow_id": workflow_id})  # fmt: skip
        return
    except LeaseLostError:
        # Either another runner owns it now (the release is a no-op), or our
        # own commit landed before its connection dropped and the retry hit
        # the checkpoint it wrote: then replay it at once from a new delivery.
        runtime.hand_back(workflow_id, row.name)
        log.warning("workflow %s: checkpoint conflict; replaying from its checkpoints",
                    workflow_id, extra={"workflow_id": workflow_id})  # fmt: skip
        return
    except DatabaseUnavailableError as exc:
        # Not the workflow's outcome: the database stayed away longer than
        # database_retry_timeout. Every checkpoint that committed is kept;
        # give the lease back once the database answers, and replay.
        _hand_back(runtime, workflow_id, row.name, exc)
        return
    except Exception as exc:
        status, error = db.ERROR, d.serializer.dumps_error(exc)
        log.info("workflow %s failed: %r", workflow_id, exc, extra={"workflow_id": workflow_id})
    finally:
        runtime.untrack(ctx)
        context.leave(token)
    try:
        finished = d.db.now(db.finish_workflow_parent, workflow_id, executor, status, output, error)
    except DatabaseUnavailableError as exc:
        _hand_back(runtime, workflow_id, row.name, exc)  # the replay finishes it
        return
    d.notifier.notify(d.done_key(workflow_id))
    if finished is not None and finished[0] is not None:
        cancellation.wake(d, d.done_key(workflow_id))  # a parent parked in result()


def _hand_back(
    runtime: ProcessRuntime, workflow_id: str, name: str | None, exc: BaseException
) -> None:
    """The database went away mid-run. The row is PENDING under this live
    executor, so no sweep would ever recover it: the runtime releases the
    lease and re-publishes the workflow as soon as the database answers."""
    log.warning("workflow %s: database unavailable (%s); it is replayed from its "
                "checkpoints when the database answers", workflow_id, exc,
                extra={"workflow_id": workflow_id})  # fmt: skip
    runtime.hand_back(workflow_id, name)
