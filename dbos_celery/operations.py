"""Managing workflows from anywhere: retrieve, list, inspect, cancel,
resume, fork, collect, migrate. The methods of ``Durable`` that act on
workflows by id rather than run them; a mixin, so that the façade keeps one
concern per module. They use only the services."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import management, retention
from .aio import off_loop
from .errors import NonExistentWorkflowError
from .store import steps, workflows
from .store.workflows import WorkflowQuery
from .validation import check_id
from .workflow import StepInfo, WorkflowHandle, WorkflowStatus

if TYPE_CHECKING:
    from .services import Services


class Operations:
    """The workflow-management methods of ``Durable``."""

    services: Services

    async def aretrieve(self, workflow_id: str) -> WorkflowHandle[Any]:
        """``retrieve`` for an event loop: awaitable, never blocks the loop."""
        return await off_loop("aretrieve", self.retrieve, workflow_id)

    def retrieve(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle to an existing workflow.

        Raises:
            NonExistentWorkflowError: no workflow has this id.
            InvalidArgumentError: a bad id.
        """
        check_id(workflow_id, "workflow_id")
        if not self.services.store.now(workflows.workflow_exists, workflow_id):
            raise NonExistentWorkflowError(workflow_id)
        return WorkflowHandle(self.services, workflow_id)

    def list_workflows(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        parent: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        newest_first: bool = False,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[WorkflowStatus]:
        """Workflows by creation time (oldest first unless ``newest_first``),
        filtered; ``created_after`` is inclusive, ``created_before`` not, and
        a naive datetime is taken as UTC."""
        query = WorkflowQuery(
            status=status, name=name, parent=parent, limit=limit, offset=offset,
            newest_first=newest_first, created_after=created_after, created_before=created_before,
        )  # fmt: skip
        return management.list_workflows(self.services, query)

    def list_steps(self, workflow_id: str) -> list[StepInfo]:
        """The checkpoints recorded for a workflow, in order (``seq`` as
        ``fork`` counts them).

        Raises:
            NonExistentWorkflowError: no workflow has this id.
        """
        check_id(workflow_id, "workflow_id")
        store = self.services.store
        rows = store.now(steps.list_steps, workflow_id)
        if not rows and not store.now(workflows.workflow_exists, workflow_id):
            raise NonExistentWorkflowError(workflow_id)
        return [StepInfo.from_row(self.services.codec, r) for r in rows]

    def cancel(self, workflow_id: str) -> bool:
        """Cancel a workflow. ENQUEUED: it never runs. Running: it stops at
        its next step, wait or sleep with status CANCELLED (a step already
        running finishes, but its checkpoint is not kept). True when this call
        cancelled it; False, and nothing changes, when it had ended already.
        Its children are not cancelled. A waiting or parked workflow wakes at
        once and ends.

        Raises:
            NonExistentWorkflowError: no workflow has this id.
        """
        return management.cancel(self.services, workflow_id)

    def resume(self, workflow_id: str) -> WorkflowHandle[Any]:
        """Run a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow again
        from its checkpoints (recovery count reset, deadline cleared). A live
        workflow is left alone; a finished one raises
        WorkflowNotResumableError (fork it instead).

        Raises:
            WorkflowNotResumableError: it ended SUCCESS or ERROR.
            NonExistentWorkflowError: no workflow has this id.
        """
        return management.resume(self.services, workflow_id, self.services.publish)[0]

    def garbage_collect(self, older_than: float | timedelta, keep_latest: int | None = None) -> int:
        """Delete the workflows in a final status (SUCCESS, ERROR, CANCELLED,
        MAX_RECOVERY_ATTEMPTS_EXCEEDED) last updated more than ``older_than``
        (a timedelta, or seconds) ago, except the ``keep_latest`` newest of
        them, with their steps, call records, events, leftover messages and
        send keys; how many. Short batches: safe while workers run. A
        collected workflow can no longer be resumed or forked, and its
        idempotency keys are gone with it."""
        return retention.garbage_collect(self.services, older_than, keep_latest)

    def fork(
        self, workflow_id: str, from_step: int, new_id: str | None = None
    ) -> WorkflowHandle[Any]:
        """Start a new workflow with the same name and inputs that keeps the
        checkpoints at seq < ``from_step`` (as ``list_steps`` numbers them)
        and runs the rest again. ``new_id`` defaults to a UUID; forking to an
        existing ``new_id`` of the same workflow returns its handle.

        Raises:
            NonExistentWorkflowError: no workflow has this id.
            InvalidArgumentError: ``from_step`` is not an int >= 0, or
                ``new_id`` is the source's id.
            ConflictingWorkflowIdError: ``new_id`` belongs to another
                workflow.
        """
        return management.fork(
            self.services, workflow_id, from_step, new_id, self.services.publish
        )[0]

    def migrate(self) -> list[int]:
        """Create or upgrade the schema now (otherwise done on first use);
        the schema versions applied (empty: it was up to date). Safe with
        many processes at once (an advisory lock; SQLite: the file lock).

        Raises:
            SchemaVersionError: the database's schema is newer than this
                code.
            DatabaseUnavailableError: the database did not answer.
        """
        return self.services.store.migrate()
