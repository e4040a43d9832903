"""send / recv / events, and durable sleep.

Postgres holds every message until one ``recv`` consumes it; Redis only
carries hints that something committed. A recv takes two sequence numbers:
one for its outcome and one for its deadline, checkpointed the first time it
has to wait, so a recovered workflow waits only for the time that was left.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import context, parking, tracing
from .aftercommit import after_commit
from .checkpoint import checkpointed, durable_deadline, record, replayed, write_checkpoint
from .errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    NonExistentWorkflowError,
    SendFromStepError,
)
from .keys import (
    DEADLINE,
    GET_EVENT,
    RECV,
    SEND,
    SET_EVENT,
    SLEEP_STEP,
    event_key,
    mailbox_key,
    sleep_key,
)
from .status import Status
from .store import caller, messages, workflows
from .validation import check_id, check_timeout, check_topic
from .waiting import Wait, wait_for

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .services import Services
    from .store.engine import Executor


def _payload(sv: Services, value: Any, what: str) -> bytes:
    data = sv.codec.dumps(value, what)
    limit = sv.settings.max_message_bytes
    if len(data) > limit:
        raise MessageTooLargeError(len(data), limit)
    return data


def send(
    sv: Services,
    destination_id: str,
    message: Any,
    topic: str | None = None,
    idempotency_key: str | None = None,
    connection: Any = None,
) -> None:
    check_id(destination_id, "destination_id")
    t = check_topic(topic)
    if idempotency_key is not None:
        check_id(idempotency_key, "idempotency_key")
    payload = _payload(sv, message, "message")
    ctx = context.current()
    if ctx is not None and ctx.in_step and idempotency_key is None:
        raise SendFromStepError(destination_id)
    attributes = {"dbos_celery.destination_id": destination_id, "dbos_celery.topic": t,
                  tracing.WORKFLOW_ID: ctx.workflow_id if ctx else None}  # fmt: skip
    with tracing.span("dbos_celery.send", attributes):
        _send(sv, ctx, destination_id, t, payload, idempotency_key, connection)


def _send(
    sv: Services, ctx: WorkflowContext | None, destination_id: str, t: str, payload: bytes,
    idempotency_key: str | None, connection: Any,
) -> None:  # fmt: skip
    status: str | None
    if connection is not None:
        if ctx is not None and not ctx.in_step:
            raise InvalidArgumentError(
                "connection= is for producers: a workflow's send is a checkpoint of its own"
            )
        _send_in(sv, connection, destination_id, t, payload, idempotency_key)
        return
    if ctx is None or ctx.in_step:
        status = _send_outside(sv, destination_id, t, payload, idempotency_key)
    else:
        status = _send_inside(sv, ctx, destination_id, t, payload, idempotency_key)
    if status is not None:  # stored: wake the recv, or publish the parked workflow
        parking.announce(sv, mailbox_key(destination_id, t), parked=status == Status.WAITING)


def _send_outside(
    sv: Services, destination_id: str, topic: str, payload: bytes, idempotency_key: str | None
) -> str:
    """Store the message once per call: without an idempotency key, under a
    key made for this call, so that the store's own retry of a commit whose
    reply was lost stores nothing more. The destination's status; WAITING
    (wake it if parked) when an earlier try of this call, or a send with the
    same key, had stored it already: that one may not have woken it."""
    call = None if idempotency_key is not None else messages.call_key()
    got = sv.store.now(messages.insert_message, destination_id, topic, payload,
                       idempotency_key, call, tracing.traceparent())  # fmt: skip
    if got is None:
        if not sv.store.now(workflows.workflow_exists, destination_id):
            raise NonExistentWorkflowError(destination_id)
        return Status.WAITING
    return got[1]


def _send_in(
    sv: Services,
    connection: Any,
    destination_id: str,
    topic: str,
    payload: bytes,
    idempotency_key: str | None,
) -> None:
    """Store the message in the caller's transaction; wake its recv once that
    commits. A key used before stores nothing, as outside."""
    tx = caller.transaction_of(sv.store, connection)
    got = caller.write(tx, sv.store, messages.insert_message, destination_id, topic, payload,
                       idempotency_key, None, tracing.traceparent())  # fmt: skip
    if got is None:
        if not caller.write(tx, sv.store, workflows.workflow_exists, destination_id):
            raise NonExistentWorkflowError(destination_id)
        return
    message_id, status = got
    key, parked = mailbox_key(destination_id, topic), status == Status.WAITING
    after_commit(sv.after_commit(), tx.autocommit, tx.hook, messages.visible_messages,
                 message_id, lambda: parking.announce(sv, key, parked=parked))  # fmt: skip


def _send_inside(
    sv: Services,
    ctx: WorkflowContext,
    destination_id: str,
    topic: str,
    payload: bytes,
    idempotency_key: str | None,
) -> str | None:
    """Store the message and its checkpoint in one transaction: exactly once
    across replays (None: sent on an earlier run)."""
    seq = ctx.next_seq()
    row = ctx.replay(seq, SEND)
    if row is not None:
        replayed(sv.codec, row)  # re-raises a recorded failure
        return None
    missing = NonExistentWorkflowError(destination_id)

    def tx(ex: Executor) -> str | None:
        error = None
        got = messages.insert_message(ex, destination_id, topic, payload, idempotency_key,
                                      None, tracing.traceparent())  # fmt: skip
        if got is None and not workflows.workflow_exists(ex, destination_id):
            # record the failure: a replay must fail the same way even if the
            # destination exists by then (no message is stored)
            error = sv.codec.dumps_error(missing)
        write_checkpoint(ex, ctx, seq, SEND, None, error)
        return None if error is not None else got[1] if got is not None else ""

    status = checkpointed(sv, ctx, tx, transaction=True)
    if status is None:
        raise missing
    return status


def _wait_in_workflow(
    sv: Services, ctx: WorkflowContext, key: str, check: Any, deadline_seq: int, timeout: float
) -> Any:
    """A wait inside a workflow whose deadline is checkpointed at
    ``deadline_seq`` the first time it has to wait (not with timeout 0)."""

    def deadline() -> float:
        if timeout == 0 and ctx.replay(deadline_seq, DEADLINE) is None:
            return 0.0  # passed: give up at once, nothing recorded
        return durable_deadline(sv, ctx, deadline_seq, DEADLINE, timeout)

    w = Wait(key, check, deadline=deadline, parks_at=parking.parks_at(sv.settings),
             poll=sv.settings.poll_interval)  # fmt: skip
    return wait_for(sv, ctx, w)


def recv(sv: Services, topic: str | None = None, timeout: float = 60.0) -> Any:
    ctx = context.require_workflow("durable.recv")
    t = check_topic(topic)
    check_timeout(timeout)
    seq, deadline_seq = ctx.next_seq(), ctx.next_seq()
    row = ctx.replay(seq, RECV)
    if row is not None:
        return replayed(sv.codec, row)
    wid = ctx.workflow_id

    def consume() -> tuple[bytes, str | None] | None:
        # a conflict means another runner recorded this recv (we lost the
        # lease while waiting): the statement failed whole, nothing consumed
        return checkpointed(sv, ctx, messages.consume_message, wid, t, seq, RECV)

    attributes = {tracing.WORKFLOW_ID: wid, "dbos_celery.topic": t}
    with tracing.span("dbos_celery.recv", attributes) as span:
        with tracing.span("dbos_celery.recv.wait", attributes):
            got = _wait_in_workflow(sv, ctx, mailbox_key(wid, t), consume, deadline_seq, timeout)
        if got is None:
            record(sv, ctx, seq, RECV, sv.codec.dumps(None))
            return None
        tracing.link(span, got[1])  # to the send that stored it
        return sv.codec.loads(got[0])


def set_event(sv: Services, key: str, value: Any) -> None:
    ctx = context.require_workflow("durable.set_event")
    check_id(key, "key")
    data = _payload(sv, value, f"value of event {key!r}")
    seq = ctx.next_seq()
    if ctx.replay(seq, SET_EVENT) is not None:
        return

    def tx(ex: Executor) -> None:
        messages.upsert_event(ex, ctx.workflow_id, key, data)
        write_checkpoint(ex, ctx, seq, SET_EVENT, None)

    checkpointed(sv, ctx, tx, transaction=True)
    parking.announce(sv, event_key(ctx.workflow_id, key))  # also workflows parked in get_event


def get_event(sv: Services, workflow_id: str, key: str, timeout: float = 60.0) -> Any:
    check_id(workflow_id, "workflow_id")
    check_id(key, "key")
    check_timeout(timeout)
    k = event_key(workflow_id, key)

    def read() -> tuple[bytes] | None:
        return sv.store.now(messages.get_event, workflow_id, key)

    ctx = context.current()
    if ctx is None or ctx.in_step:
        until = time.monotonic() + timeout
        w = Wait(k, read, deadline=lambda: until, clock=time.monotonic,
                 poll=sv.settings.poll_interval)  # fmt: skip
        got = wait_for(sv, None, w)
        return None if got is None else sv.codec.loads(got[0])
    seq, deadline_seq = ctx.next_seq(), ctx.next_seq()
    row = ctx.replay(seq, GET_EVENT)
    if row is not None:
        return replayed(sv.codec, row)
    got = _wait_in_workflow(sv, ctx, k, read, deadline_seq, timeout)
    record(sv, ctx, seq, GET_EVENT, None if got is None else got[0])
    return None if got is None else sv.codec.loads(got[0])


def sleep(sv: Services, seconds: float) -> None:
    """Sleep until the checkpointed wake time; a cancel (or the workflow's
    deadline) ends the sleep at once with WorkflowCancelledError."""
    ctx = context.require_workflow("durable.sleep")
    check_timeout(seconds)
    seq = ctx.next_seq()

    def never() -> None:
        return None  # nothing to find: only the time ends a sleep

    def wake() -> float:
        return durable_deadline(sv, ctx, seq, SLEEP_STEP, seconds)

    w: Wait[None] = Wait(sleep_key(ctx.workflow_id), never, deadline=wake, listen=False,
             parks_at=parking.parks_at(sv.settings),
             poll=sv.settings.poll_interval)  # fmt: skip
    wait_for(sv, ctx, w)
