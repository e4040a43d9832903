"""Wiring into Celery: signals and worker bootsteps.

- a worker bootstep starts, after the pool has forked, the main process's
  heartbeat, wakeup subscriber and recovery sweeper (and stops them);
- ``worker_process_init`` / ``worker_process_shutdown``: each pool child's
  heartbeat and subscriber, made after the fork;
- ``task_received``: the workflow messages (and durable.call tasks) this
  process has prefetched, reported with its heartbeat;
- a bootstep that notes the worker's queues and concurrency before the pool
  forks (for CallWouldDeadlockError);
- ``task_prerun`` / ``task_success`` / ``task_failure`` / ``task_revoked``:
  the outcomes of durable.call tasks.

Celery holds signal receivers weakly: the owner keeps this object alive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals

from .keys import parse_task_id
from .recovery.sweep import Sweeper

if TYPE_CHECKING:
    from celery import Celery

    from .calls.dispatch import Dispatcher
    from .calls.outcome import Outcomes
    from .services import Services


class CeleryHooks:
    """Connects the workflows of one app to Celery's worker lifecycle."""

    def __init__(
        self,
        app: Celery,
        sv: Services,
        is_workflow: Callable[[str], bool],
        dispatcher: Dispatcher,
        outcomes: Outcomes,
        on_worker_stop: Callable[[], None],
    ) -> None:
        self.app = app
        self.sv = sv
        self.is_workflow = is_workflow
        self.dispatcher = dispatcher
        self.outcomes = outcomes
        self.on_worker_stop = on_worker_stop
        self.sweeper: Sweeper | None = None

    def install(self) -> None:
        signals.worker_process_init.connect(self._on_process_init)
        signals.worker_process_shutdown.connect(self._on_process_shutdown)
        signals.task_received.connect(self._on_task_received)
        self.app.steps["worker"].add(_worker_bootstep(self))
        signals.task_prerun.connect(self.outcomes.on_prerun)
        signals.task_success.connect(self.outcomes.on_success)
        signals.task_failure.connect(self.outcomes.on_failure)
        signals.task_revoked.connect(self.outcomes.on_revoked)
        self.app.steps["worker"].add(_facts_bootstep(self.dispatcher.note_worker))

    def stop_sweeper(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None

    def _on_process_init(self, **_: Any) -> None:
        self.sv.runtime().start()
        self.sv.notifier.start()

    def _on_process_shutdown(self, **_: Any) -> None:
        self.sv.stop_runtime()

    def worker_start(self) -> None:
        sv = self.sv
        sv.store.migrate()
        sv.runtime().start()
        sv.notifier.start()
        if self.sweeper is None:
            self.sweeper = Sweeper(sv.store, sv.settings, sv.notifier, sv.publish)
            self.sweeper.start()

    def _on_task_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app or request is None:
            return
        if self.is_workflow(getattr(request, "name", None) or ""):
            self.sv.runtime().note_reserved(request.id)
        elif parse_task_id(getattr(request, "id", None)) is not None:
            self.sv.runtime().note_call_received(request.id)


def _worker_bootstep(hooks: CeleryHooks) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that starts, after the pool has forked, the main
    process's heartbeat, wakeup subscriber and recovery sweeper."""

    class DurableWorker(bootsteps.StartStopStep):  # type: ignore[misc]
        name = "dbos_celery"
        requires = ("celery.worker.components:Pool",)

        def start(self, parent: Any) -> None:
            hooks.worker_start()

        def stop(self, parent: Any) -> None:
            hooks.on_worker_stop()

    return DurableWorker


def _facts_bootstep(note_worker: Callable[[Any], None]) -> type[bootsteps.Step]:
    """A worker bootstep that notes, before the pool forks, the queues the
    worker consumes and its concurrency (for CallWouldDeadlockError)."""

    class DurableCallsWorker(bootsteps.Step):  # type: ignore[misc]
        name = "dbos_celery_calls"

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            note_worker(parent)

    return DurableCallsWorker
