"""What the pages show, made from the store's rows: values decoded for
reading, errors with their tracebacks, a workflow's checkpoints as a
timeline (durable.calls with their Celery task ids and the workers that
ran them), and what a workflow waits for now.

Nothing here is escaped: the templates escape everything they print.
"""

from __future__ import annotations

import json
import pprint
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..keys import (
    CALL_PREFIX,
    CALLS,
    DEADLINE,
    DISPATCH_PREFIX,
    DONE,
    EVENT,
    GET_EVENT,
    MAILBOX,
    RECV,
    RESULT,
    SEND,
    SEP,
    SET_EVENT,
    SLEEP,
    SLEEP_STEP,
    START_PREFIX,
)
from ..serialization import Serializer
from ..status import Status
from ..store.inspect import Checkpoint, WorkerInfo, WorkflowRecord

MAX_TEXT = 20_000  # characters of one value shown; the rest is cut


def shown(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit:,} more characters)"


def pretty(value: Any) -> str:
    """A decoded value as indented JSON, or Python's repr when not JSON."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return pprint.pformat(value, width=96)


def decode(codec: Serializer, data: bytes | None) -> tuple[Any, str | None]:
    """(the value, None), or (None, why) when it cannot be decoded."""
    if data is None:
        return None, None
    try:
        return codec.loads(data), None
    except Exception as exc:
        return None, f"cannot decode {len(data)} bytes with {codec.name!r}: {exc}"


def value_text(codec: Serializer, data: bytes | None) -> str | None:
    """A stored value for reading (None: nothing stored)."""
    if data is None:
        return None
    value, problem = decode(codec, data)
    return shown(problem if problem is not None else pretty(value))


@dataclass(frozen=True)
class ErrorView:
    type: str
    message: str
    traceback: str | None

    @property
    def summary(self) -> str:
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return f"{self.type}: {first}" if first else self.type


def error_view(codec: Serializer, data: bytes | None) -> ErrorView | None:
    """A recorded exception: its type, message and (when recorded) traceback."""
    if data is None:
        return None
    record, problem = decode(codec, data)
    if problem is not None or not isinstance(record, dict):
        return ErrorView("(unreadable error)", problem or pretty(record), None)
    module, qualname = str(record.get("module", "")), str(record.get("qualname", "?"))
    kind = qualname if module in ("", "builtins") else f"{module}.{qualname}"
    tb = record.get("traceback")
    return ErrorView(kind, shown(str(record.get("message", ""))),
                     shown(tb) if isinstance(tb, str) and tb else None)  # fmt: skip


def inputs_view(codec: Serializer, data: bytes) -> tuple[str | None, str | None]:
    """(args, kwargs) of a workflow's inputs for reading (None: none given)."""
    value, problem = decode(codec, data)
    if problem is not None or not isinstance(value, dict):
        return shown(problem or pretty(value)), None
    args, kwargs = value.get("args") or None, value.get("kwargs") or None
    return (None if args is None else shown(pretty(args)),
            None if kwargs is None else shown(pretty(kwargs)))  # fmt: skip


def epoch(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    return None


# --- the timeline -------------------------------------------------------------

_KINDS = {
    SEND: "send", RECV: "recv", SET_EVENT: "set_event", GET_EVENT: "get_event",
    SLEEP_STEP: "sleep", DEADLINE: "deadline", RESULT: "child result",
}  # fmt: skip


@dataclass
class TimelineRow:
    seq: int
    kind: str  # step, send, recv, call, child, deadline, ...
    name: str  # the step's or task's or child workflow's name
    at: datetime
    took: float | None  # seconds since the checkpoint before (the first: since created)
    output: str | None = None
    error: ErrorView | None = None
    # a durable.call: its Celery task id, the process that ran it, when it was sent
    task_id: str | None = None
    started_by: str | None = None
    worker: WorkerInfo | None = None
    dispatched_at: datetime | None = None
    child_id: str | None = None  # a child's start
    until: datetime | None = None  # a wait's durable deadline


@dataclass
class Timeline:
    rows: list[TimelineRow] = field(default_factory=list)
    executors: set[str] = field(default_factory=set)  # every worker id named


def timeline(codec: Serializer, created: datetime, checkpoints: list[Checkpoint]) -> Timeline:
    """The checkpoints in order; a durable.call is one row (its outcome at
    seq with the dispatch record at seq + 1 folded in), or a row for its
    dispatch while it has no outcome yet."""
    by_seq = {c.seq: c for c in checkpoints}
    out = Timeline()
    before = created
    for c in checkpoints:
        took = max(0.0, (c.created_at - before).total_seconds())
        row = TimelineRow(c.seq, "step", c.name, c.created_at, took)
        if c.name.startswith(DISPATCH_PREFIX):
            if by_seq.get(c.seq - 1, _NONE).name.startswith(CALL_PREFIX):
                continue  # shown with its outcome
            row.kind, row.name = "call", c.name[len(DISPATCH_PREFIX) :]
            _call_record(codec, row, c)
            row.dispatched_at, row.output = c.created_at, None
        elif c.name.startswith(CALL_PREFIX):
            row.kind, row.name = "call", c.name[len(CALL_PREFIX) :]
            dispatch = by_seq.get(c.seq + 1)
            if dispatch is not None and dispatch.name.startswith(DISPATCH_PREFIX):
                _call_record(codec, row, dispatch)
                row.dispatched_at = dispatch.created_at
                row.took = max(0.0, (c.created_at - dispatch.created_at).total_seconds())
            row.output, row.error = value_text(codec, c.output), error_view(codec, c.error)
        elif c.name.startswith(START_PREFIX):
            row.kind, row.name = "child", c.name[len(START_PREFIX) :]
            child, _ = decode(codec, c.output)
            row.child_id = child if isinstance(child, str) else None
        else:
            row.kind = _KINDS.get(c.name, "step")
            if row.kind in ("deadline", "sleep"):  # both record a time (epoch seconds)
                row.until = epoch(decode(codec, c.output)[0])
            else:
                row.output, row.error = value_text(codec, c.output), error_view(codec, c.error)
        if row.started_by:
            out.executors.add(row.started_by)
        out.rows.append(row)
        before = max(before, c.created_at)
    return out


class _Absent:
    name = ""


_NONE: Any = _Absent()


def _call_record(codec: Serializer, row: TimelineRow, dispatch: Checkpoint) -> None:
    info, _ = decode(codec, dispatch.output)
    if isinstance(info, dict):
        task_id, started_by = info.get("task_id"), info.get("started_by")
        row.task_id = task_id if isinstance(task_id, str) else None
        row.started_by = started_by if isinstance(started_by, str) else None


# --- what it waits for ------------------------------------------------------------


@dataclass(frozen=True)
class WaitView:
    """What a workflow waits for now, as far as the database knows."""

    what: str  # a sentence
    topic: str | None = None  # a message's topic ('' : the default topic)
    event: str | None = None
    other: str | None = None  # the workflow whose event or outcome it waits for
    until: datetime | None = None  # when it wakes at the latest
    parked: bool = False


def wait_view(rec: WorkflowRecord, rows: list[TimelineRow]) -> WaitView | None:
    if rec.status == Status.WAITING:
        kind, _, rest = (rec.waiting_for or "").partition(SEP)
        other, _, name = rest.partition(SEP)
        until = rec.wake_at
        if kind == MAILBOX:
            return WaitView("a message", topic=name, until=until, parked=True)
        if kind == EVENT:
            return WaitView("an event of another workflow", event=name, other=other,
                            until=until, parked=True)  # fmt: skip
        if kind == DONE:
            return WaitView("the outcome of a child workflow", other=other, until=until,
                            parked=True)  # fmt: skip
        if kind == CALLS:
            return WaitView("the outcomes of its durable.calls (Celery tasks)", until=until,
                            parked=True)  # fmt: skip
        if kind == SLEEP:
            return WaitView("the end of its durable sleep", until=until, parked=True)
        return WaitView(f"a wakeup ({rec.waiting_for!r})", until=until, parked=True)
    if rec.status == Status.PENDING:
        calls = [r for r in rows if r.kind == "call" and r.output is None and r.error is None]
        if calls:
            return WaitView(f"{len(calls)} durable.call(s) running or queued in Celery")
        if rows and rows[-1].kind == "deadline":
            return WaitView("a message, an event or a child's outcome (it holds its worker "
                            "slot; what exactly is recorded once it parks)",
                            until=rows[-1].until)  # fmt: skip
        if rows and rows[-1].kind == "sleep":
            return WaitView("the end of its durable sleep (it holds its worker slot)",
                            until=rows[-1].until)  # fmt: skip
    return None
