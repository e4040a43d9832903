"""Workflows, handles and status.

A workflow runs as the body of a Celery task whose message carries only the
workflow id (see ``runner.py``). ``start`` commits the row, then publishes
the message; a handle reads the outcome from the row from any process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import context, parking, tracing
from .aftercommit import after_commit
from .aio import off_loop
from .checkpoint import checkpointed, durable_deadline, record, replayed, write_checkpoint
from .errors import (
    ConflictingWorkflowIdError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    NonExistentWorkflowError,
    ResultTimeoutError,
    WorkflowFailedError,
)
from .keys import DEADLINE, RESULT, START_PREFIX, done_key
from .routing import queue_of
from .status import FINAL, Status
from .store import caller, workers, workflows
from .validation import check_id, check_timeout
from .waiting import Wait, wait_for

if TYPE_CHECKING:
    from celery import Task

    from .context import WorkflowContext
    from .serialization import Serializer
    from .services import Services
    from .store.common import StepRow, WorkflowRow
    from .store.engine import Executor

P = ParamSpec("P")
R = TypeVar("R")


def _error_text(codec: Serializer, error: bytes | None) -> str | None:
    if error is None:
        return None
    exc = codec.loads_error(error)
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class WorkflowStatus:
    """A workflow's row as ``handle.status()`` and ``durable.list_workflows()``
    read it: ``status`` is one of ENQUEUED, PENDING (running), WAITING (parked),
    SUCCESS, ERROR, CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED;
    ``recovery_attempts`` counts the runs taken over from a worker that died;
    ``executor_id`` is the worker process running it (None when queued or
    parked); ``error`` is the recorded error as ``"Type: message"``;
    ``deadline`` is set by a timeout; ``note`` says why it does not run, when
    that is known (no live worker registers its name). A snapshot: it does
    not change when the workflow does."""

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
    # why it does not run, when we know (e.g. no live worker registers it)
    note: str | None = None

    @classmethod
    def from_row(
        cls, codec: Serializer, row: WorkflowRow, note: str | None = None
    ) -> WorkflowStatus:
        """Build one from a store row (the library's use; callers get these
        from ``status()`` and ``list_workflows()``)."""
        return cls(
            row.id, row.name, row.status, row.created_at, row.updated_at,
            row.recovery_attempts, row.executor_id, row.parent_id,
            _error_text(codec, row.error), row.deadline, note,
        )  # fmt: skip


@dataclass(frozen=True)
class StepInfo:
    """One recorded checkpoint of a workflow: a step, send, recv, sleep..."""

    seq: int
    name: str
    output: Any
    error: str | None

    @classmethod
    def from_row(cls, codec: Serializer, row: StepRow) -> StepInfo:
        """Build one from a store row (the library's use; callers get these
        from ``durable.list_steps()``)."""
        return cls(row.seq, row.name, codec.loads(row.output), _error_text(codec, row.error))


class WorkflowHandle(Generic[R]):
    """A reference to a workflow by id, from any process: what ``start``,
    ``durable.retrieve`` and ``durable.resume`` return. It holds only the id
    (``workflow_id``); each call reads the database."""

    def __init__(self, sv: Services, workflow_id: str) -> None:
        self.sv = sv
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    async def aresult(self, timeout: float | None = None) -> R:
        """``result`` for an event loop: awaitable, never blocks the loop (the
        wait holds a thread of the loop's default executor)."""
        return await off_loop("aresult", self.result, timeout)

    async def astatus(self) -> WorkflowStatus:
        """``status`` for an event loop."""
        return await off_loop("astatus", self.status)

    def status(self) -> WorkflowStatus:
        """The workflow's status now (a snapshot).

        Raises:
            NonExistentWorkflowError: no workflow has this id (or it was
                garbage-collected).
            DatabaseUnavailableError: the database did not answer within
                ``database_retry_timeout``.
        """
        sv = self.sv
        row = sv.store.now(workflows.get_workflow, self.workflow_id)
        if row is None:
            raise NonExistentWorkflowError(self.workflow_id)
        note = None
        if row.status == Status.ENQUEUED and not sv.store.now(
            workers.registered, row.name, sv.settings.worker_timeout
        ):
            note = (
                f"no live worker has registered workflow {row.name!r}: import its module in "
                "the worker (include=, autodiscover_tasks, durable.autodiscover)"
            )
        return WorkflowStatus.from_row(sv.codec, row, note)

    def result(self, timeout: float | None = None) -> R:
        """The workflow's output, or its error raised. Inside a workflow the
        outcome is checkpointed, so a replay does not wait again, and so is
        the deadline of ``timeout`` (a replay waits only for the time that
        was left; a timeout is recorded and raised again on replay), and a
        long wait parks (frees the worker slot). ``timeout=None`` waits as
        long as it takes.

        Raises:
            ResultTimeoutError: not finished within ``timeout`` seconds (also
                a builtin ``TimeoutError``); the workflow goes on.
            WorkflowFailedError: it ended CANCELLED or
                MAX_RECOVERY_ATTEMPTS_EXCEEDED.
            NonExistentWorkflowError: no workflow has this id.
            Exception: the workflow's own error, re-raised as its type where
                that class is importable here, else ``StepError``.
        """
        check_timeout(timeout, allow_none=True)
        ctx = context.current()
        if ctx is None or ctx.in_step:
            return self._wait(timeout)
        seq = ctx.next_seq()
        # a second number, for the durable deadline, only with a timeout
        deadline_seq = None if timeout is None else ctx.next_seq()
        row = ctx.replay(seq, RESULT)
        if row is not None:
            return replayed(self.sv.codec, row)  # type: ignore[no-any-return]
        codec = self.sv.codec
        try:
            out = self._wait(timeout, ctx, deadline_seq)
        except DatabaseUnavailableError:
            raise  # not the child's outcome: the run is handed back and replayed
        except Exception as exc:  # a ResultTimeoutError too: its deadline is durable
            record(self.sv, ctx, seq, RESULT, None, codec.dumps_error(exc))
            raise
        record(self.sv, ctx, seq, RESULT, codec.dumps(out))
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
        sv = self.sv

        def outcome() -> tuple[str, bytes | None, bytes | None] | None:
            got = sv.store.now(workflows.get_status, self.workflow_id)
            if got is None:
                raise NonExistentWorkflowError(self.workflow_id)
            return got if got[0] in FINAL else None

        if ctx is None:  # monotonic outside a workflow
            until = None if timeout is None else time.monotonic() + timeout
            w = Wait(done_key(self.workflow_id), outcome, deadline=lambda: until,
                     clock=time.monotonic, poll=sv.settings.poll_interval)  # fmt: skip
        else:  # epoch (durable) inside one

            def deadline() -> float | None:
                if deadline_seq is None or timeout is None:
                    return None
                return durable_deadline(sv, ctx, deadline_seq, DEADLINE, timeout)

            w = Wait(done_key(self.workflow_id), outcome, deadline=deadline,
                     parks_at=parking.parks_at(sv.settings),
                     poll=sv.settings.poll_interval)  # fmt: skip
        got = wait_for(sv, ctx, w)
        if got is None:
            raise ResultTimeoutError(self.workflow_id, timeout or 0.0)
        status, output, error = got
        if status == Status.SUCCESS:
            return sv.codec.loads(output)  # type: ignore[no-any-return]
        if status == Status.ERROR and error is not None:
            raise sv.codec.loads_error(error)
        raise WorkflowFailedError(self.workflow_id, status)


class Workflow(Generic[P, R]):
    """A durable workflow function, registered as a Celery task: what
    ``@durable.workflow()`` returns. ``name`` is its Celery task name,
    ``task`` the task (whose message carries only the workflow id), ``fn``
    the function. Start it with ``start`` (or ``start_with``); calling it
    runs it durably in the calling thread."""

    def __init__(
        self,
        sv: Services,
        fn: Callable[P, R],
        name: str,
        task: Task,
        run: Callable[[str], None],
        timeout: float | None = None,
    ) -> None:
        check_timeout(timeout, allow_none=True)
        self.sv = sv
        self.fn = fn
        self.name = name
        self.task = task
        self._run = run  # claim and run a workflow in this thread (the task body)
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
        connection: Any = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]:
        """Commit the workflow row, then publish its Celery message.

        Idempotent on ``workflow_id``: starting an existing id returns a
        handle to that workflow and runs nothing. Inside a workflow the start
        is checkpointed and the child's id defaults to ``{parent_id}-{seq}``.

        ``timeout`` (seconds; default: the decorator's ``timeout``) sets a
        deadline counted from now, queueing included: past it the workflow is
        cancelled, and so are its children (a child inherits its parent's
        deadline when that is earlier).

        ``connection`` (a SQLAlchemy Connection or Session, a psycopg 3
        Connection, or a Django connection, on the Durable's Postgres
        database): write the row in that connection's open transaction; the
        workflow runs once it commits, and never if it rolls back.

        ``workflow_id``, ``timeout`` and ``connection`` belong to ``start``:
        for a workflow with a parameter of one of those names, use
        ``start_with``.

        Once ``start`` returns, the workflow runs to completion, across
        worker crashes (its row is committed before the message is
        published; a lost message is re-published by the recovery sweep).

        Raises:
            InvalidArgumentError: a bad ``workflow_id``, ``timeout`` or
                ``connection`` (nothing is written).
            SerializationError: the arguments cannot be serialized.
            ConflictingWorkflowIdError: the id belongs to another workflow
                (a second start of this one is not an error, whatever its
                inputs: it returns the existing workflow's handle).
            DatabaseUnavailableError: the database did not answer within
                ``database_retry_timeout`` (nothing was written).
        """
        return self.start_with(args, kwargs, workflow_id=workflow_id, timeout=timeout,
                               connection=connection)  # fmt: skip

    def start_with(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        connection: Any = None,
    ) -> WorkflowHandle[R]:
        """``start`` with the workflow's arguments given apart, as Celery's
        ``apply_async(args, kwargs, ...)``: any parameter name is free."""
        if not isinstance(args, (tuple, list)):
            raise InvalidArgumentError(f"args must be a tuple or list, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidArgumentError(f"kwargs must be a dict, got {type(kwargs).__name__}")
        check_timeout(timeout, allow_none=True)
        with tracing.span(f"dbos_celery.start {self.name}", {tracing.WORKFLOW_ID: workflow_id}):
            return self._start(args, kwargs, workflow_id, timeout, connection)

    def _start(
        self, args: Any, kwargs: dict[str, Any] | None, workflow_id: str | None,
        timeout: float | None, connection: Any,
    ) -> WorkflowHandle[R]:  # fmt: skip
        timeout = self.timeout if timeout is None else timeout
        queue = self._queue()
        if connection is not None:
            return self._start_in(connection, args, kwargs or {}, workflow_id, timeout, queue)
        workflow_id, inserted = self._create(args, kwargs or {}, workflow_id, timeout, queue)
        if inserted:
            self.sv.publish(workflow_id, self.name, queue)
        return WorkflowHandle(self.sv, workflow_id)

    def _start_in(
        self,
        connection: Any,
        args: Any,
        kwargs: dict[str, Any],
        workflow_id: str | None,
        timeout: float | None,
        queue: str | None,
    ) -> WorkflowHandle[R]:
        """Write the row in the caller's transaction; publish after its commit."""
        sv = self.sv
        ctx = context.current()
        if ctx is not None and not ctx.in_step:
            raise InvalidArgumentError(
                "connection= is for producers: inside a workflow, start a child without it "
                "(its start is a checkpoint of the parent)"
            )
        if workflow_id is not None:
            check_id(workflow_id, "workflow_id")
        inputs = self._inputs(args, kwargs)
        tx = caller.transaction_of(sv.store, connection)
        wid = workflow_id or str(uuid.uuid4())
        if caller.write(tx, sv.store, self._insert, wid, inputs, queue, None, timeout):
            after_commit(sv.after_commit(), tx.autocommit, tx.hook, workflows.visible_workflows,
                         wid, lambda: sv.publish(wid, self.name, queue))  # fmt: skip
        return WorkflowHandle(sv, wid)

    def _inputs(self, args: Any, kwargs: dict[str, Any]) -> bytes:
        return self.sv.codec.dumps(
            {"args": list(args), "kwargs": kwargs}, f"inputs of workflow {self.name!r}"
        )

    async def astart(
        self,
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]:
        """``start`` for an event loop: awaitable, never blocks the loop."""
        return await off_loop("astart", self.start, *args, workflow_id=workflow_id,
                              timeout=timeout, **kwargs)  # fmt: skip

    def _queue(self) -> str | None:
        """The queue this workflow's task is routed to from here (recorded
        with the row, so that every later publish goes there too)."""
        return queue_of(self.task.app, self.name)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the workflow durably in this thread and return its result."""
        workflow_id, _ = self._create(args, kwargs, None, self.timeout, self._queue())
        self._run(workflow_id)
        return WorkflowHandle[R](self.sv, workflow_id).result()

    def _create(
        self,
        args: Any,
        kwargs: dict[str, Any],
        workflow_id: str | None,
        timeout: float | None,
        queue: str | None,
    ) -> tuple[str, bool]:
        sv = self.sv
        if workflow_id is not None:
            check_id(workflow_id, "workflow_id")
        inputs = self._inputs(args, kwargs)
        ctx = context.current()
        if ctx is None or ctx.in_step:
            generated = workflow_id is None
            workflow_id = workflow_id or str(uuid.uuid4())
            inserted = sv.store.now(self._insert, workflow_id, inputs, queue, None, timeout)
            # a generated id found existing: the store retried a commit whose
            # reply was lost; that row is this call's, still to be published
            return workflow_id, inserted or generated
        return self._create_child(ctx, inputs, workflow_id, timeout, queue)

    def _create_child(
        self,
        ctx: WorkflowContext,
        inputs: bytes,
        workflow_id: str | None,
        timeout: float | None,
        queue: str | None,
    ) -> tuple[str, bool]:
        """A child workflow: its start is a checkpoint of the parent."""
        sv = self.sv
        seq = ctx.next_seq()
        step_name = START_PREFIX + self.name
        row = ctx.replay(seq, step_name)
        if row is not None:
            return str(sv.codec.loads(row.output)), False
        child_id = workflow_id or f"{ctx.workflow_id}-{seq}"
        id_bytes = sv.codec.dumps(child_id)

        def tx(ex: Executor) -> bool:
            inserted = self._insert(
                ex, child_id, inputs, queue, ctx.workflow_id, timeout, ctx.deadline
            )
            write_checkpoint(ex, ctx, seq, step_name, id_bytes)
            return inserted

        return child_id, checkpointed(sv, ctx, tx, transaction=True)

    def _insert(
        self,
        ex: Executor,
        workflow_id: str,
        inputs: bytes,
        queue: str | None,
        parent: str | None,
        timeout: float | None = None,
        inherited_deadline: float | None = None,
    ) -> bool:
        """Insert the row (running on ``queue``); an existing row of the same
        workflow is fine (idempotent start), one of another workflow is an
        error."""
        if workflows.insert_workflow(ex, workflow_id, self.name, inputs, parent, timeout,
                                     inherited_deadline, queue, tracing.traceparent()):  # fmt: skip
            return True
        existing = workflows.workflow_name(ex, workflow_id)
        if existing is not None and existing != self.name:
            raise ConflictingWorkflowIdError(workflow_id, existing, self.name)
        return False
