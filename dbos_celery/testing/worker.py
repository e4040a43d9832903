"""An in-process Celery worker for a test's workflows.

The embedded examples run their workflows the same way: Celery's own test
worker (``celery.contrib.testing.worker.start_worker``) in a thread of the
test's process, on the threads pool, with the in-memory broker. The
library's worker hooks (heartbeats, the beater, the recovery sweep) run in
it as in any worker. It consumes every queue the app's workflows and tasks
are routed to, so that ``task_routes`` need no change for tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .binding import app_queues

if TYPE_CHECKING:
    from ..durable import Durable


@contextmanager
def start_durable_worker(
    durable: Durable,
    *,
    pool: str = "threads",
    concurrency: int = 4,
    queues: Iterable[str] | None = None,
    loglevel: str = "WARNING",
    shutdown_timeout: float = 30.0,
    **parameters: Any,
) -> Iterator[Any]:
    """Run a Celery worker for ``durable.app`` in a thread of this process
    for the block, then stop it warm, as SIGTERM stops a worker in a deploy:
    the waits of its workflows park and its running tasks finish (within
    ``shutdown_timeout`` seconds, else RuntimeError). ``queues``: default,
    every queue the app's tasks are routed to. ``parameters`` go to
    Celery's ``WorkController`` (as with ``celery_worker_parameters``).
    Workflows must be defined before it starts: a worker knows the tasks
    its app had when it started."""
    from celery.contrib.testing.worker import start_worker
    from celery.worker import state

    app = durable.app
    names = sorted(queues) if queues is not None else app_queues(app)
    try:
        with start_worker(
            app, pool=pool, concurrency=concurrency, queues=names, loglevel=loglevel,
            perform_ping_check=False, shutdown_timeout=shutdown_timeout, **parameters,
        ) as worker:  # fmt: skip
            try:
                yield worker
            finally:
                _stop_warm(worker, shutdown_timeout)
    finally:
        state.should_stop = None
        durable.close()  # its threads and connections, and the worker's beater


def _stop_warm(worker: Any, timeout: float) -> None:
    """Ask ``worker`` for a warm shutdown and wait until it is done. (Celery's
    test worker stops cold: its waiting workflows would park, but the
    threads pool would not wait for the tasks still running, which would
    outlive the test.)"""
    from celery.worker import state

    state.should_stop = 0  # what SIGTERM sets; the worker looks every DRAIN s
    if not worker.blueprint.shutdown_complete.wait(timeout):
        raise RuntimeError(
            f"the test's Celery worker did not stop within {timeout:g} s: a task or "
            "step still runs (raise shutdown_timeout in durable_worker_parameters)"
        )
