"""Wiring into Celery: signals and worker bootsteps.

- before the pool forks, the worker's main process starts its beater, which
  heartbeats for every process of the worker (``recovery/liveness.py``);
- a worker bootstep starts, after the pool has forked, the main process's
  heartbeat, wakeup subscriber and recovery sweeper (and stops them, on a
  warm or a cold shutdown);
- ``worker_process_init`` / ``worker_process_shutdown``: each pool child's
  heartbeat and subscriber, made after the fork;
- ``task_received``: the workflow messages (and durable.call tasks) this
  process has prefetched, reported with its heartbeat;
- a bootstep that notes the worker's queues and concurrency before the pool
  forks (for CallWouldDeadlockError), and makes the shared counter through
  which the pool's processes learn that the worker wants its slots back
  (``slots.py``; refreshed by the main process);
- ``task_prerun`` / ``task_success`` / ``task_failure`` / ``task_revoked``:
  the outcomes of durable.call tasks;
- ``task_failure`` with Celery's ``TimeLimitExceeded`` (sent by a prefork
  worker's main process before it kills the child): the workflow's step is
  marked killed by the time limit (``store/kills.py``).

Celery holds signal receivers weakly: the owner keeps this object alive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals
from celery.exceptions import TimeLimitExceeded

from .broker import QueueDepths
from .keys import parse_task_id
from .loops import Periodic
from .recovery.sweep import Sweeper
from .retention import Retention
from .slots import REFRESH
from .store import kills

log = logging.getLogger("dbos_celery")

# how long a stopping worker waits for its in-process runs beyond a poll
STOP_GRACE = 5.0

if TYPE_CHECKING:
    from celery import Celery

    from .calls.dispatch import Dispatcher
    from .calls.outcome import Outcomes
    from .services import Services


@dataclass(eq=False)  # identity: Celery's signals key receivers by it
class CeleryHooks:
    """Connects the workflows of one app to Celery's worker lifecycle."""

    app: Celery
    sv: Services
    is_workflow: Callable[[str], bool]
    dispatcher: Dispatcher
    outcomes: Outcomes
    sweeper: Sweeper | None = None
    depths: QueueDepths | None = None
    retention: Retention | None = None
    # the running worker's loops: its slot counter's refresh, its beater's keeper
    demand: Periodic | None = None
    keeper: Periodic | None = None

    def install(self) -> None:
        signals.worker_process_init.connect(self._on_process_init)
        signals.worker_process_shutdown.connect(self._on_process_shutdown)
        signals.task_received.connect(self._on_task_received)
        self.app.steps["worker"].add(_worker_bootstep(self))
        signals.task_prerun.connect(self.outcomes.on_prerun)
        signals.task_success.connect(self.outcomes.on_success)
        signals.task_failure.connect(self.outcomes.on_failure)
        signals.task_revoked.connect(self.outcomes.on_revoked)
        signals.task_failure.connect(self._on_task_failure)
        self.app.steps["worker"].add(_facts_bootstep(self.before_fork))

    def before_fork(self, worker: Any) -> None:
        """In a worker's main process, before the pool forks: note its queues
        and concurrency, make the counter of requests waiting for a slot
        that the pool's processes read, and start the beater."""
        facts = self.dispatcher.note_worker(worker)
        self.sv.slots.create(facts.slots)
        self.sv.store.migrate()  # the beater's statements need the tables
        self.sv.liveness.start(facts.slots)

    def worker_stop(self) -> None:
        """Warm or cold shutdown (again: nothing more to do): waits in the
        pool park at once, freeing their slots; then this process's threads
        stop and its connections close. The beater goes on: the pool's
        processes may still be finishing their tasks."""
        self.sv.slots.shutting_down()
        self._stop_loops()
        # threads, gevent, solo: the runs are in this process; give their waits
        # the time to park (they look within poll_interval) before its
        # heartbeat stops
        runtime = self.sv.current_runtime()
        if runtime is not None:
            runtime.wait_idle(self.sv.settings.poll_interval + STOP_GRACE)
        self.stop_sweeper()
        self.sv.close()

    def stop(self) -> None:
        """Stop this process's worker loops, sweep and automatic collection
        (``Durable.close``)."""
        self._stop_loops()
        self.stop_sweeper()

    def _stop_loops(self) -> None:
        for loop in (self.demand, self.keeper):
            if loop is not None:
                loop.stop()
        self.demand = self.keeper = None

    def sweeper_now(self) -> Sweeper:
        """This process's sweeper (its thread runs in a worker's main
        process; ``Durable.sweep`` runs it once elsewhere). It remembers
        when it saw queues empty between passes."""
        if self.sweeper is None:
            self.depths = QueueDepths(self.app)
            sv = self.sv
            self.sweeper = Sweeper(sv.store, sv.settings, sv.notifier, sv.publish, self.depths)
        return self.sweeper

    def stop_sweeper(self) -> None:
        """Stop the main process's sweep and automatic collection."""
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None
        if self.depths is not None:
            self.depths.close()
            self.depths = None
        if self.retention is not None:
            self.retention.stop()
            self.retention = None

    def _on_process_init(self, **_: Any) -> None:
        self.sv.runtime().start()
        self.sv.notifier.start()

    def _on_process_shutdown(self, **_: Any) -> None:
        self.sv.stop_runtime()

    def worker_start(self) -> None:
        sv = self.sv  # (migrated before the pool forked)
        sv.liveness.wait_ready()
        self.keeper = Periodic("dbos-celery-beater", 1.0, sv.liveness.ensure)
        self.keeper.start()
        sv.runtime().start()
        sv.notifier.start()
        self.sweeper_now().start()
        if self.retention is None and sv.settings.retention is not None:
            self.retention = Retention(sv, sv.settings.retention)
            self.retention.start()
        self.demand = Periodic("dbos-celery-slots", REFRESH, sv.slots.refresh)
        self.demand.start()

    def _on_task_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app or request is None:
            return
        if self.is_workflow(getattr(request, "name", None) or ""):
            self.sv.runtime().note_reserved(request.id)
        elif parse_task_id(getattr(request, "id", None)) is not None:
            self.sv.runtime().note_call_received(request.id)
        self.sv.slots.refresh()  # a request may wait for a slot now

    def _on_task_failure(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        """Celery's hard time limit ends a workflow's run: in a prefork
        worker's main process, before the child is killed. Mark the workflow
        (if one of this worker's processes runs it) so that its replay counts
        the kill against the step that was running."""
        board = self.sv.liveness.board
        if (
            board is None or task_id is None or not isinstance(exception, TimeLimitExceeded)
            or getattr(sender, "app", None) is not self.app or not self.is_workflow(sender.name)
        ):  # fmt: skip
            return
        ours = [eid for _, _, eid in board.claimed()]
        limit = float(exception.args[0]) if exception.args else 0.0
        if self.sv.store.now(kills.time_limit, task_id, ours, limit):
            log.warning("workflow %s: the hard time limit (%g s) ended its run; its step counts "
                        "it as a failed attempt", task_id, limit,
                        extra={"workflow_id": task_id})  # fmt: skip


def time_limit(task: Any) -> float | None:
    """Seconds after its start at which Celery ends the running ``task``: the
    earlier of its soft and hard limits, from the message (``apply_async``'s
    ``time_limit``/``soft_time_limit``) or else the task's own (which default
    to the app's ``task_time_limit``/``task_soft_time_limit``). None: none."""
    hard, soft = getattr(task.request, "timelimit", None) or (None, None)
    limits = [x for x in (soft or task.soft_time_limit, hard or task.time_limit) if x]
    return float(min(limits)) if limits else None


def _worker_bootstep(hooks: CeleryHooks) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that starts, after the pool has forked, the main
    process's heartbeat, wakeup subscriber and recovery sweeper."""

    class DurableWorker(bootsteps.StartStopStep):  # type: ignore[misc]
        name = "dbos_celery"
        requires = ("celery.worker.components:Pool",)

        def start(self, parent: Any) -> None:
            hooks.worker_start()

        def stop(self, parent: Any) -> None:
            hooks.worker_stop()

        def terminate(self, parent: Any) -> None:
            # a cold shutdown (SIGQUIT, Celery's test worker) calls this, not stop
            hooks.worker_stop()

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
