"""A workflow that the workers have not registered (its module was never
imported there) is reported: the sweep logs an error naming it and how to
register it, and its status says why it does not run."""

from __future__ import annotations

from celery import Celery

from dbos_celery import Durable
from tests.support import Env, WorkerProcess, start_worker, wait_for

APP = "tests.apps.park"


def test_workflow_no_live_worker_registered_is_reported(
    env: Env, workers: list[WorkerProcess]
) -> None:
    w = start_worker(env, workers, APP, name="w")
    # a producer whose app defines a workflow that the worker's app lacks
    app = Celery("producer", broker=env.broker_url)
    app.conf.task_default_queue = env.queue
    durable = Durable(app, env.database_url, redis_url=env.redis_url, schema=env.schema)

    @durable.workflow(name="park.ghost")
    def ghost() -> str:
        return "never here"

    try:
        handle = ghost.start(workflow_id="ghost-1")
        message = "workflow 'park.ghost' has queued runs but no live worker has registered it"
        wait_for(lambda: message in w.log_path.read_text(), 30, w.describe)
        assert "durable.autodiscover" in w.log_path.read_text()
        status = handle.status()
        assert status.status == "ENQUEUED"
        assert status.note is not None and "park.ghost" in status.note
        # reported once, not at every sweep
        wait_for(lambda: "Received unregistered task" in w.log_path.read_text(), 10)
        assert w.log_path.read_text().count(message) == 1
    finally:
        durable.close()
