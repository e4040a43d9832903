"""Messages (send, consume) and events."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import (
    ARRAY,
    Integer,
    LargeBinary,
    Text,
    bindparam,
    delete,
    exists,
    insert,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .common import (
    ASYNC_COMMIT,
    WID,
)
from .dialect import in_list, now
from .engine import Executor
from .tables import call_keys, events, send_keys
from .tables import messages as msg
from .tables import steps as st
from .tables import workflows as wf

_DEST = bindparam("dest", type_=Text)
_DEST_EXISTS = exists(select(literal(1)).where(wf.c.id == _DEST))
_MESSAGE_VALUES = (
    bindparam("dest2", type_=Text),
    bindparam("topic", type_=Text),
    bindparam("payload", type_=LargeBinary),
    bindparam("trace", type_=Text),
)
_MESSAGE_COLS = ["destination_id", "topic", "payload", "trace"]
# the destination's status, read by the insert: a WAITING one is woken. Read
# FOR SHARE: a park of the destination committing meanwhile is waited for
# (so the status read is WAITING), or waits for this send's commit (so the
# park's own re-check after its commit sees the message); without the lock,
# a send that read PENDING could commit after that re-check and wake nobody
_DEST_STATUS = (
    select(wf.c.status).where(wf.c.id == _DEST).with_for_update(read=True).scalar_subquery()
)
_INSERT_MESSAGE = (
    insert(msg)
    .from_select(_MESSAGE_COLS, select(*_MESSAGE_VALUES).where(_DEST_EXISTS))
    .returning(msg.c.id, _DEST_STATUS)
)
_KEY_INSERT = (
    pg_insert(send_keys)
    .from_select(
        ["destination_id", "idempotency_key"],
        select(bindparam("dest2", type_=Text), bindparam("key", type_=Text)).where(_DEST_EXISTS),
    )
    .on_conflict_do_nothing()
    .returning(send_keys.c.destination_id)
)
_KEY = _KEY_INSERT.cte("k")


def _once_per_key(key: Any) -> Any:
    """The message insert, for the one row of ``key`` (a CTE inserting the
    key: no row when it existed, and nothing is stored)."""
    return (
        insert(msg)
        .from_select(
            _MESSAGE_COLS,
            select(*_MESSAGE_VALUES).select_from(key),
        )
        .returning(msg.c.id, _DEST_STATUS)
    )


_INSERT_KEYED_MESSAGE = _once_per_key(_KEY)
_CALL_KEY_INSERT = (
    pg_insert(call_keys)
    .from_select(["key"], select(bindparam("call", type_=Text)).where(_DEST_EXISTS))
    .on_conflict_do_nothing()
    .returning(call_keys.c.key)
)
_INSERT_CALL_MESSAGE = _once_per_key(_CALL_KEY_INSERT.cte("c"))
# a call's key outlives every retry of the call (database_retry_timeout, a
# TCP keepalive's detection) by far
CALL_KEY_TTL = 3600.0
_PRUNE_CALL_KEYS = delete(call_keys).where(call_keys.c.key < bindparam("before", type_=Text))


def call_key() -> str:
    """A new key for one send() call: time-ordered, so that old ones are
    pruned by a range of the primary key."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}"


def prune_call_keys(ex: Executor, ttl: float = CALL_KEY_TTL) -> int:
    """Forget the call keys older than ``ttl`` seconds; how many."""
    return ex.count(_PRUNE_CALL_KEYS, {"before": f"{int((time.time() - ttl) * 1e9):020d}"})


def insert_message(
    ex: Executor,
    destination_id: str,
    topic: str,
    payload: bytes,
    idempotency_key: str | None,
    call: str | None = None,
    trace: str | None = None,
) -> tuple[int, str] | None:
    """Store a message for an existing workflow: its id and the destination's
    status (WAITING: parked, to be woken). None when the destination does not exist
    or the key was used before (the caller's ``idempotency_key``, else the
    ``call`` key of this send() call); nothing is written then. The caller
    tells the two apart with workflow_exists."""
    params = {"dest": destination_id, "dest2": destination_id, "topic": topic,
              "payload": payload, "key": idempotency_key, "call": call, "trace": trace}  # fmt: skip
    if idempotency_key is not None:
        key_insert, keyed = _KEY_INSERT, _INSERT_KEYED_MESSAGE
    elif call is not None:
        key_insert, keyed = _CALL_KEY_INSERT, _INSERT_CALL_MESSAGE
    else:
        row = ex.first(_INSERT_MESSAGE, params)
        return None if row is None else (int(row[0]), str(row[1] or ""))
    if ex.sqlite:
        with ex.atomic():
            stored = ex.first(key_insert, params) is not None
            row = ex.first(_INSERT_MESSAGE, params) if stored else None
    else:
        row = ex.first(keyed, params)
    return None if row is None else (int(row[0]), str(row[1] or ""))


_VISIBLE = select(msg.c.id).where(in_list(msg.c.id, bindparam("ids", type_=ARRAY(Integer))))


def visible_messages(ex: Executor, message_ids: list[int]) -> set[int]:
    """Those of ``message_ids`` this session sees: committed, not consumed."""
    return {int(r[0]) for r in ex.rows(_VISIBLE, {"ids": message_ids})}


_OLDEST = (
    select(msg.c.id)
    .where(msg.c.destination_id == WID, msg.c.topic == bindparam("topic", type_=Text))
    .order_by(msg.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_TAKE = delete(msg).where(msg.c.id == _OLDEST).returning(msg.c.payload, msg.c.trace)
_TAKEN = _TAKE.cte("taken")
_RECV_CHECKPOINT = insert(st).values(
    workflow_id=bindparam("wid2", type_=Text),
    seq=bindparam("seq", type_=Integer),
    name=bindparam("name", type_=Text),
    output=bindparam("payload", type_=LargeBinary),
)
_RECORDED = (
    insert(st)
    .from_select(
        ["workflow_id", "seq", "name", "output"],
        select(
            bindparam("wid2", type_=Text),
            bindparam("seq", type_=Integer),
            bindparam("name", type_=Text),
            _TAKEN.c.payload,
        ).select_from(_TAKEN.join(ASYNC_COMMIT, literal_column("true"))),
    )
    .returning(st.c.output)
    .cte("recorded")
)
_CONSUME = select(_RECORDED.c.output, _TAKEN.c.trace).select_from(
    _RECORDED.join(_TAKEN, literal_column("true"))
)


def consume_message(
    ex: Executor, workflow_id: str, topic: str, seq: int, step_name: str
) -> tuple[bytes, str | None] | None:
    """Delete the oldest message of (workflow, topic) and write the recv
    checkpoint, in one statement; its payload and the traceparent of its
    send. It commits asynchronously: if the WAL is
    lost both vanish together and the replay takes the same (still oldest)
    message again; any later synchronous commit flushes it first."""
    params = {"wid": workflow_id, "wid2": workflow_id, "topic": topic, "seq": seq,
              "name": step_name}  # fmt: skip
    if ex.sqlite:
        with ex.atomic():
            row = ex.first(_TAKE, params)
            if row is not None:
                ex.count(_RECV_CHECKPOINT, {**params, "payload": row[0]})
    else:
        row = ex.first(_CONSUME, params)
    return (row[0], row[1]) if row is not None else None


_UPSERT_EVENT = pg_insert(events).values(
    workflow_id=WID, key=bindparam("key", type_=Text), value=bindparam("value", type_=LargeBinary)
)
_UPSERT_EVENT = _UPSERT_EVENT.on_conflict_do_update(
    index_elements=["workflow_id", "key"],
    set_={"value": _UPSERT_EVENT.excluded.value, "updated_at": now()},
)


def upsert_event(ex: Executor, workflow_id: str, key: str, value: bytes) -> None:
    ex.count(_UPSERT_EVENT, {"wid": workflow_id, "key": key, "value": value})


_GET_EVENT = select(events.c.value).where(
    events.c.workflow_id == WID, events.c.key == bindparam("key", type_=Text)
)


def get_event(ex: Executor, workflow_id: str, key: str) -> tuple[bytes] | None:
    row = ex.first(_GET_EVENT, {"wid": workflow_id, "key": key})
    return (row[0],) if row is not None else None
