"""Key formats and checkpoint names: every string two modules must agree on.

- **Wakeup keys** name what a waiter waits for: a mailbox, an event, a
  workflow's outcome, a cancel, the outcomes of its calls, a sleep. The
  notifier publishes them after a commit; a parked row stores the key it
  waits for (``workflows.waiting_for``), and the store's wake statements
  build the same strings in SQL, so the format lives here only.
- **Checkpoint names** of the durable operations other than user steps.
- **Task ids** of ``durable.call``: ``dbos-{workflow_id}-{seq}``.
- **Names in shared servers**: the Redis channel prefix and the Postgres
  lock names of one schema.
"""

from __future__ import annotations

SEP = "\x1f"  # never in an id, topic or key (all are printable text)

# wakeup key kinds
MAILBOX = "m"
EVENT = "e"
DONE = "d"
CANCEL = "c"
CALLS = "t"
SLEEP = "s"


def key(kind: str, workflow_id: str, name: str = "") -> str:
    """The wakeup key of ``kind`` for a workflow (and a topic or event key)."""
    return f"{kind}{SEP}{workflow_id}{SEP}{name}"


def mailbox_key(workflow_id: str, topic: str) -> str:
    """Messages for a workflow on a topic ('' is the default topic)."""
    return key(MAILBOX, workflow_id, topic)


def event_key(workflow_id: str, event: str) -> str:
    return key(EVENT, workflow_id, event)


def done_key(workflow_id: str) -> str:
    """A workflow reached a final status."""
    return key(DONE, workflow_id)


def cancel_key(workflow_id: str) -> str:
    """A workflow was cancelled (its waits listen to this too)."""
    return key(CANCEL, workflow_id)


def calls_key(workflow_id: str) -> str:
    """An outcome of one of the workflow's durable.calls was recorded."""
    return key(CALLS, workflow_id)


def sleep_key(workflow_id: str) -> str:
    """A durable sleep: nothing wakes it but its time."""
    return key(SLEEP, workflow_id)


# checkpoint names of the durable operations
SEND = "durable.send"
RECV = "durable.recv"
SET_EVENT = "durable.set_event"
GET_EVENT = "durable.get_event"
SLEEP_STEP = "durable.sleep"
DEADLINE = "durable.deadline"  # the durable deadline of a wait (recv, get_event, result)
RESULT = "durable.result"  # a child's outcome, read inside a workflow
START_PREFIX = "durable.start:"  # + workflow name: a child's start
CALL_PREFIX = "durable.call:"  # + task name: a call's outcome (seq)
DISPATCH_PREFIX = "durable.dispatch:"  # + task name: a call's dispatch record (seq + 1)

TASK_ID_PREFIX = "dbos-"


def task_id_for(workflow_id: str, seq: int) -> str:
    """The Celery task id of the durable.call at ``seq`` of a workflow."""
    return f"{TASK_ID_PREFIX}{workflow_id}-{seq}"


def parse_task_id(task_id: object) -> tuple[str, int] | None:
    """(workflow id, seq) of a call's task id; None for any other task id."""
    if not isinstance(task_id, str) or not task_id.startswith(TASK_ID_PREFIX):
        return None
    workflow_id, sep, seq = task_id[len(TASK_ID_PREFIX) :].rpartition("-")
    if not sep or not workflow_id or not (seq.isascii() and seq.isdigit()):
        return None
    return workflow_id, int(seq)


def channel_prefix(schema: str) -> str:
    """The Redis channel prefix of one schema's wakeup keys."""
    return f"dbos_celery:{schema}:"


def migration_lock(schema: str) -> str:
    return f"dbos_celery:{schema}"


def sweep_lock(schema: str) -> str:
    return f"dbos_celery:{schema}:sweep"


def retention_lock(schema: str) -> str:
    """Held by the automatic collection's batches: one worker at a time."""
    return f"dbos_celery:{schema}:retention"
