"""The task side of durable.call: Celery signal receivers, in the worker that
runs a call's task, that mark its dispatch record started (the process that
runs it, so that the waiting workflow can watch that process's heartbeat)
and write its outcome checkpoint. No result backend is involved; a task is
recognised by its id (``keys.parse_task_id``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery.exceptions import TaskRevokedError

from .. import parking
from ..errors import SerializationError
from ..keys import calls_key, parse_task_id
from ..loops import backoff
from ..store import steps

if TYPE_CHECKING:
    from celery import Celery

    from ..services import Services

log = logging.getLogger("dbos_celery")


class Outcomes:
    """Receivers of task_prerun / task_success / task_failure / task_revoked
    for the call tasks of one app."""

    def __init__(self, sv: Services, app: Celery) -> None:
        self.sv = sv
        self.app = app

    def _call_of(self, sender: Any, task_id: Any) -> tuple[str, int] | None:
        if getattr(sender, "app", None) is not self.app:
            return None
        return parse_task_id(task_id)

    def on_prerun(self, sender: Any = None, task_id: Any = None, **_: Any) -> None:
        got = self._call_of(sender, task_id)
        if got is None:
            return
        sv = self.sv
        try:
            runtime = sv.runtime()
            runtime.start()  # its heartbeat tells the workflow this task is alive
            marker = sv.codec.dumps({"task_id": task_id, "started_by": runtime.executor_id})
            sv.store.now(steps.mark_call_started, got[0], got[1], marker)
        except Exception as exc:
            log.warning("task %s: could not mark its durable.call started (%s)", task_id, exc)

    def on_success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        request = getattr(sender, "request", None)
        got = self._call_of(sender, getattr(request, "id", None))
        if got is None:
            return
        codec = self.sv.codec
        try:
            output, error = codec.dumps(result, f"result of task {sender.name!r}"), None
        except SerializationError as exc:
            output, error = None, codec.dumps_error(exc)
        self.write(got, output, error)

    def on_failure(
        self, sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any
    ) -> None:
        got = self._call_of(sender, task_id)
        if got is None or not isinstance(exception, BaseException):
            return
        self.write(got, None, self.sv.codec.dumps_error(exception))

    def on_revoked(
        self, sender: Any = None, request: Any = None, expired: bool = False, **_: Any
    ) -> None:
        got = self._call_of(sender, getattr(request, "id", None))
        if got is None:
            return
        exc = TaskRevokedError("expired" if expired else "revoked")
        self.write(got, None, self.sv.codec.dumps_error(exc))

    def write(self, call: tuple[str, int], output: bytes | None, error: bytes | None) -> None:
        """Record an outcome; if the database is down, keep retrying in the
        background (as long as this process lives: if it dies, the waiting
        workflow sees its heartbeat stop and sends the task again)."""
        workflow_id, seq = call
        try:
            self._write(call, output, error)
        except Exception as exc:
            log.error("could not record the outcome of durable.call %s of workflow %s (%s); "
                      "retrying in the background", seq, workflow_id, exc,
                      extra={"workflow_id": workflow_id})  # fmt: skip
            threading.Thread(
                target=self._write_later, args=(call, output, error), daemon=True
            ).start()

    def _write(self, call: tuple[str, int], output: bytes | None, error: bytes | None) -> None:
        workflow_id, seq = call
        if self.sv.store.now(steps.insert_call_outcome, workflow_id, seq, output, error):
            # the workflow waits in-process, or is parked on its calls and
            # published again once all of them have settled
            parking.announce(self.sv, calls_key(workflow_id))

    def _write_later(
        self, call: tuple[str, int], output: bytes | None, error: bytes | None
    ) -> None:
        for delay in backoff(1.0, 30.0):
            time.sleep(delay)
            try:
                self._write(call, output, error)
            except Exception:
                continue
            return
