"""Managing workflows from anywhere: cancel, resume, fork.

- **cancel**: an ENQUEUED workflow becomes CANCELLED and never runs (its
  Celery message finds nothing to claim and is dropped); a PENDING one
  becomes CANCELLED and its runner stops at its next durable boundary (see
  ``cancellation.py``); a parked (WAITING) one becomes CANCELLED at once,
  since nothing runs it; a finished one is left as it is (a no-op). Children
  are not cancelled (a timeout does cancel them).
- **resume**: a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow is
  ENQUEUED again with a fresh recovery count and no deadline, and runs again
  from its checkpoints. A live one is left as it is; a finished one
  (SUCCESS, ERROR) cannot be resumed: fork it.
- **fork**: a new workflow with the same name and inputs, holding a copy of
  the source's checkpoints at seq < ``from_step`` and of its events; it
  replays those and runs the rest again. Idempotent on ``new_id``.

Each writes Postgres first and then publishes the Celery message, when given
a publisher; a row left ENQUEUED without a message is published by the
recovery sweep after ``enqueued_timeout``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .cancellation import notify_stopped
from .errors import (
    ConflictingWorkflowIdError,
    InvalidArgumentError,
    NonExistentWorkflowError,
    WorkflowNotResumableError,
)
from .status import LIVE
from .store import workflows
from .store.workflows import WorkflowQuery
from .validation import check_id, check_number
from .workflow import WorkflowHandle, WorkflowStatus

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("dbos_celery")

Publisher = Callable[[str, str, str | None], None]  # (workflow id, name, queue)


def cancel(sv: Services, workflow_id: str) -> bool:
    """True when this call cancelled the workflow; False when it had ended
    already (SUCCESS, ERROR, CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED)."""
    check_id(workflow_id, "workflow_id")
    if sv.store.now(workflows.cancel_workflow, workflow_id):
        log.info("workflow %s cancelled", workflow_id, extra={"workflow_id": workflow_id})
        notify_stopped(sv.notifier, workflow_id)
        return True
    if not sv.store.now(workflows.workflow_exists, workflow_id):
        raise NonExistentWorkflowError(workflow_id)
    return False


def resume(
    sv: Services, workflow_id: str, publish: Publisher | None
) -> tuple[WorkflowHandle[Any], bool]:
    """The handle, and whether a new run was enqueued (and published when
    ``publish`` is given). A live workflow is left alone (False)."""
    check_id(workflow_id, "workflow_id")
    target = sv.store.now(workflows.resume_workflow, workflow_id)
    handle: WorkflowHandle[Any] = WorkflowHandle(sv, workflow_id)
    if target is None:
        state = sv.store.now(workflows.lease_state, workflow_id)
        if state is None:
            raise NonExistentWorkflowError(workflow_id)
        if state[0] in LIVE:
            return handle, False
        raise WorkflowNotResumableError(workflow_id, state[0])
    log.info("workflow %s resumed", workflow_id, extra={"workflow_id": workflow_id})
    if publish is not None:
        publish(*target)
    return handle, True


def fork(
    sv: Services,
    workflow_id: str,
    from_step: int,
    new_id: str | None,
    publish: Publisher | None,
) -> tuple[WorkflowHandle[Any], bool]:
    """The new workflow's handle, and whether this call created it (False:
    ``new_id`` was forked from this workflow's kind before)."""
    check_id(workflow_id, "workflow_id")
    if new_id is not None:
        check_id(new_id, "new_id")
    if not isinstance(from_step, int) or isinstance(from_step, bool) or from_step < 0:
        raise InvalidArgumentError(f"from_step must be an int >= 0, got {from_step!r}")
    if new_id == workflow_id:
        raise InvalidArgumentError("new_id must differ from the forked workflow's id")
    new_id = new_id or str(uuid.uuid4())
    handle: WorkflowHandle[Any] = WorkflowHandle(sv, new_id)
    target = sv.store.run(workflows.fork_workflow, workflow_id, new_id, from_step)
    if target is None:
        source = sv.store.now(workflows.workflow_name, workflow_id)
        if source is None:
            raise NonExistentWorkflowError(workflow_id)
        existing = sv.store.now(workflows.workflow_name, new_id)
        if existing != source:
            raise ConflictingWorkflowIdError(new_id, str(existing), source)
        return handle, False
    log.info("workflow %s forked from %s at step %d", new_id, workflow_id, from_step,
             extra={"workflow_id": new_id})  # fmt: skip
    if publish is not None:
        publish(*target)
    return handle, True


def list_workflows(sv: Services, query: WorkflowQuery) -> list[WorkflowStatus]:
    """The workflows matching ``query``, its filters checked first."""
    for what in ("status", "name", "parent"):
        value = getattr(query, what)
        if value is not None and not isinstance(value, str):
            raise InvalidArgumentError(f"{what} must be a str, got {type(value).__name__}")
    for what in ("limit", "offset"):
        if getattr(query, what) is not None:
            check_number(getattr(query, what), what, integer=True)
    if not isinstance(query.newest_first, bool):
        raise InvalidArgumentError(f"newest_first must be a bool, got {query.newest_first!r}")
    query = replace(
        query,
        created_after=as_utc(query.created_after, "created_after"),
        created_before=as_utc(query.created_before, "created_before"),
    )
    rows = sv.store.now(workflows.list_workflows, query)
    return [WorkflowStatus.from_row(sv.codec, r) for r in rows]


def as_utc(value: Any, what: str) -> datetime | None:
    """A datetime filter; a naive one is taken as UTC."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidArgumentError(f"{what} must be a datetime, got {type(value).__name__}")
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
