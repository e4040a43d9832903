"""Kill markers: why the processes running a workflow died in a step.

A process that dies while it runs a workflow leaves the row PENDING under a
dead executor; the sweep recovers it and the replay runs the step again. If
the step itself is what kills its process, that would loop until
``max_recovery_attempts``. So the death is noted on the row: by the
worker's main process when Celery's hard time limit ends the run
(``time_limit``), by the worker's beater when a pool process is gone
(``CRASHED``, killed by a signal, out of memory, a crash). The next step
body the replay would run counts the deaths as its attempts (``step.py``),
and the marker is cleared once that step has an outcome (``clear``).
Each also frees the row at once (no executor), so that the next sweep
recovers it without waiting for ``worker_timeout``.
"""

from __future__ import annotations

from sqlalchemy import ARRAY, Text, bindparam, literal, update

from ..status import Status
from .common import HELD, WID
from .dialect import in_list, now
from .engine import Executor
from .tables import workflows as wf

TIME_LIMIT = "time_limit:"  # + the limit in seconds
DIED = "died"


def _killed(why: object) -> dict[str, object]:
    return {"killed": why, "kills": wf.c.kills + 1, "executor_id": None, "updated_at": now()}


_EXECUTORS = in_list(wf.c.executor_id, bindparam("executors", type_=ARRAY(Text)))
_TIME_LIMIT = (
    update(wf)
    .where(wf.c.id == WID, wf.c.status == Status.PENDING, _EXECUTORS)
    .values(**_killed(bindparam("why", type_=Text)))
)
# run by the beater for the processes it found gone (ids bound as "ids")
CRASHED = (
    update(wf)
    .where(
        wf.c.status == Status.PENDING,
        in_list(wf.c.executor_id, bindparam("ids", type_=ARRAY(Text))),
    )
    .values(**_killed(literal(DIED, Text)))
)
_CLEAR = update(wf).where(HELD).values(killed=None, kills=0)


def time_limit(ex: Executor, workflow_id: str, executors: list[str], limit: float) -> bool:
    """Celery's hard time limit ends the run of ``workflow_id`` in a process
    of this worker (one of ``executors``): mark it; whether it was running
    there."""
    params = {"wid": workflow_id, "executors": executors, "why": f"{TIME_LIMIT}{limit:g}"}
    return ex.count(_TIME_LIMIT, params) > 0


def clear(ex: Executor, workflow_id: str, executor_id: str) -> None:
    """The step that the deaths were counted against has an outcome."""
    ex.count(_CLEAR, {"wid": workflow_id, "executor": executor_id})
