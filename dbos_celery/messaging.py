"""send / recv / events, and durable sleep.

Postgres holds every message until one ``recv`` consumes it; Redis only
carries hints that something committed. A recv takes two sequence numbers:
one for its outcome and one for its deadline, checkpointed the first time it
has to wait, so a recovered workflow waits only for the time that was left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import cancellation, context
from . import database as db
from .errors import (
    MessageTooLargeError,
    NonExistentWorkflowError,
    SendFromStepError,
)
from .step import checkpointed, durable_deadline, record, replayed, write_checkpoint
from .validation import check_id, check_timeout, check_topic
from .wakeup import key

if TYPE_CHECKING:
    from .context import WorkflowContext
    from .durable import Durable

T = TypeVar("T")
SEND = "durable.send"
RECV = "durable.recv"
SET_EVENT = "durable.set_event"
GET_EVENT = "durable.get_event"
SLEEP = "durable.sleep"
DEADLINE = "durable.deadline"


def _payload(d: Durable, value: Any, what: str) -> bytes:
    data = d.serializer.dumps(value, what)
    if len(data) > d.max_message_bytes:
        raise MessageTooLargeError(len(data), d.max_message_bytes)
    return data


def send(
    d: Durable,
    destination_id: str,
    message: Any,
    topic: str | None = None,
    idempotency_key: str | None = None,
) -> None:
    check_id(destination_id, "destination_id")
    t = check_topic(topic)
    if idempotency_key is not None:
        check_id(idempotency_key, "idempotency_key")
    payload = _payload(d, message, "message")
    ctx = context.current()
    if ctx is not None and ctx.in_step and idempotency_key is None:
        raise SendFromStepError(destination_id)
    k = key("m", destination_id, t)
    if ctx is None or ctx.in_step:
        status = d.db.now(db.insert_message, destination_id, t, payload, idempotency_key)
        if status is None:
            if not d.db.now(db.workflow_exists, destination_id):
                raise NonExistentWorkflowError(destination_id)
            return  # a retried send with the same key: stored once already
    else:
        seq = ctx.next_seq()
        row = ctx.replay(seq, SEND)
        if row is not None:
            replayed(d, row)  # re-raises a recorded failure
            return  # sent on an earlier run of this workflow
        missing = NonExistentWorkflowError(destination_id)

        def tx(ex: db.Executor) -> str | None:
            error = None
            got = db.insert_message(ex, destination_id, t, payload, idempotency_key)
            if got is None:
                if not db.workflow_exists(ex, destination_id):
                    # record the failure: a replay must fail the same way even
                    # if the destination exists by then (no message is stored)
                    error = d.serializer.dumps_error(missing)
            write_checkpoint(ex, ctx, seq, SEND, None, error)
            if error is not None:
                return None
            return got or ""

        status = checkpointed(d, ctx, tx, transaction=True)
        if status is None:
            raise missing
    d.notifier.notify(k)
    if status == db.WAITING:  # parked: publish it again
        cancellation.wake(d, k)


def recv(d: Durable, topic: str | None = None, timeout: float = 60.0) -> Any:
    ctx = context.require_workflow("durable.recv")
    t = check_topic(topic)
    check_timeout(timeout)
    seq, deadline_seq = ctx.next_seq(), ctx.next_seq()
    row = ctx.replay(seq, RECV)
    if row is not None:
        return replayed(d, row)
    wid = ctx.workflow_id

    def consume() -> tuple[bytes] | None:
        # a conflict means another runner recorded this recv (we lost the
        # lease while waiting): the statement failed whole, nothing consumed
        return checkpointed(d, ctx, db.consume_message, wid, t, seq, RECV)

    got = _wait(d, ctx, key("m", wid, t), consume, deadline_seq, timeout)
    if got is None:
        record(d, ctx, seq, RECV, d.serializer.dumps(None))
        return None
    return d.serializer.loads(got[0])


def _wait(
    d: Durable,
    ctx: WorkflowContext,
    k: str,
    check: Callable[[], tuple[bytes] | None],
    deadline_seq: int,
    timeout: float,
) -> tuple[bytes] | None:
    """Register, check, then wait-and-recheck until found or the durable
    deadline passes. The deadline is checkpointed only when a wait is needed.
    While waiting it also listens for a cancel, and ends at the workflow's
    own deadline (a timeout) with WorkflowCancelledError."""
    cancellation.check(d, ctx)
    d.notifier.start()
    with d.notifier.waiters.register(k) as waiter:
        got = check()
        if got is not None or timeout == 0 and ctx.replay(deadline_seq, DEADLINE) is None:
            return got
        deadline = durable_deadline(d, ctx, deadline_seq, DEADLINE, timeout)
        parks_at = cancellation.parks_at(d)
        with cancellation.watch(d, ctx, waiter):
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    return None
                if cancellation.should_park(d, parks_at, remaining):
                    cancellation.park(d, ctx, k, deadline)  # raises unless k is ready
                    parks_at = cancellation.parks_at(d)
                wait = min(remaining, d.poll_interval)
                if parks_at is not None:
                    wait = max(0.0, min(wait, parks_at - time.monotonic()))
                waiter.wait(cancellation.bound(ctx, wait))
                cancellation.check(d, ctx)
                got = check()
                if got is not None:
                    return got


def set_event(d: Durable, key_: str, value: Any) -> None:
    ctx = context.require_workflow("durable.set_event")
    check_id(key_, "key")
    data = _payload(d, value, f"value of event {key_!r}")
    seq = ctx.next_seq()
    if ctx.replay(seq, SET_EVENT) is not None:
        return

    def tx(ex: db.Executor) -> None:
        db.upsert_event(ex, ctx.workflow_id, key_, data)
        write_checkpoint(ex, ctx, seq, SET_EVENT, None)

    checkpointed(d, ctx, tx, transaction=True)
    k = key("e", ctx.workflow_id, key_)
    d.notifier.notify(k)
    cancellation.wake(d, k)  # workflows parked in get_event


def get_event(d: Durable, workflow_id: str, key_: str, timeout: float = 60.0) -> Any:
    check_id(workflow_id, "workflow_id")
    check_id(key_, "key")
    check_timeout(timeout)
    k = key("e", workflow_id, key_)

    def read() -> tuple[bytes] | None:
        return d.db.now(db.get_event, workflow_id, key_)

    ctx = context.current()
    if ctx is None or ctx.in_step:
        d.notifier.start()
        deadline = time.monotonic() + timeout
        with d.notifier.waiters.register(k) as waiter:
            while True:
                got = read()
                remaining = deadline - time.monotonic()
                if got is not None or remaining <= 0:
                    return None if got is None else d.serializer.loads(got[0])
                waiter.wait(min(remaining, d.poll_interval))
    seq, deadline_seq = ctx.next_seq(), ctx.next_seq()
    row = ctx.replay(seq, GET_EVENT)
    if row is not None:
        return replayed(d, row)
    got = _wait(d, ctx, k, read, deadline_seq, timeout)
    record(d, ctx, seq, GET_EVENT, None if got is None else got[0])
    return None if got is None else d.serializer.loads(got[0])


def sleep(d: Durable, seconds: float) -> None:
    """Sleep until the checkpointed wake time; a cancel (or the workflow's
    deadline) ends the sleep at once with WorkflowCancelledError."""
    ctx = context.require_workflow("durable.sleep")
    check_timeout(seconds)
    seq = ctx.next_seq()
    cancellation.check(d, ctx)
    wake = durable_deadline(d, ctx, seq, SLEEP, seconds)
    if wake <= time.time():
        return
    d.notifier.start()
    parks_at = cancellation.parks_at(d)
    with cancellation.watch(d, ctx) as waiter:
        while (remaining := wake - time.time()) > 0:
            if cancellation.should_park(d, parks_at, remaining):
                cancellation.park(d, ctx, key("s", ctx.workflow_id), wake)  # raises
                parks_at = None
            wait = remaining
            if parks_at is not None:
                wait = max(0.0, min(wait, parks_at - time.monotonic()))
            waiter.wait(cancellation.bound(ctx, wait))
            cancellation.check(d, ctx)
