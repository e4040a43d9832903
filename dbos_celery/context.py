"""The running workflow's context, held in a contextvar.

A context knows the workflow id, the checkpoints recorded so far (read once
when the workflow is claimed) and the next sequence number. Every durable
operation takes the next number; on replay the recorded value at that number
is returned instead of doing the work again.

Every record of the ``dbos_celery`` logger carries a ``workflow_id``
attribute (:class:`WorkflowIdFilter`): use ``%(workflow_id)s`` in a format.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import NonDeterministicWorkflowError, NotInWorkflowError

if TYPE_CHECKING:
    from .store.common import StepRow


@dataclass
class WorkflowContext:
    workflow_id: str
    executor_id: str
    recorded: dict[int, StepRow] = field(default_factory=dict)
    seq: int = 0
    in_step: bool = False
    # epoch seconds past which it is cancelled (a timeout), read at the claim
    deadline: float | None = None
    # set by a cancel hint (Redis, or this process's heartbeat): read the
    # status at the next durable boundary
    stop_hint: bool = False
    # monotonic time by which a wait parks: before the Celery task's time
    # limit (soft or hard) ends the run (None: no limit)
    park_by: float | None = None
    # the lease epoch of the process when it claimed the workflow (fencing)
    epoch: int = 0
    # (why, how often) the processes that ran it last died in a step: counted
    # against the next step body this run would start (store/kills.py)
    killed: tuple[str, int] | None = None
    # a step's checkpoint not written yet: it goes with the next durable
    # write (or the final status), at the latest before the next step body
    # runs or the workflow waits (checkpoint.py); ``held_sent`` while a
    # write that carries it is in flight
    held: StepRow | None = None
    held_sent: bool = False

    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def replay(self, seq: int, name: str) -> StepRow | None:
        """The checkpoint recorded at ``seq``, checked against ``name``."""
        row = self.recorded.get(seq)
        if row is not None and row.name != name:
            raise NonDeterministicWorkflowError(self.workflow_id, seq, row.name, name)
        return row


_current: ContextVar[WorkflowContext | None] = ContextVar("dbos_celery_workflow", default=None)


def current() -> WorkflowContext | None:
    return _current.get()


def require_workflow(call: str) -> WorkflowContext:
    """The running workflow's context, outside any step; else a clear error."""
    ctx = _current.get()
    if ctx is None or ctx.in_step:
        raise NotInWorkflowError(call)
    return ctx


def enter(ctx: WorkflowContext | None) -> object:
    return _current.set(ctx)


def leave(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


class WorkflowIdFilter(logging.Filter):
    """Gives each record a ``workflow_id``: the one the call passed in
    ``extra``, else the running workflow's, else "-". On the ``dbos_celery``
    logger already; add it to a handler to tag your own records too."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.workflow_id`` if the record has none; never drops a
        record (always True)."""
        if not hasattr(record, "workflow_id"):
            ctx = _current.get()
            record.workflow_id = ctx.workflow_id if ctx is not None else "-"
        return True


logging.getLogger("dbos_celery").addFilter(WorkflowIdFilter())
