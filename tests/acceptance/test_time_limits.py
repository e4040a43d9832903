"""Celery's time limits bound work, not waiting: a wait that would outlast
the task's time limit (per task, soft or hard, or the app's global one)
parks before it, so the limit never fails or kills a workflow that is only
waiting; real prefork `celery worker` processes (time limits are enforced
by the prefork pool)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from tests.apps.park import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)

APP = "tests.apps.park"


@pytest.mark.parametrize(
    ("workflow", "extra"),
    [
        ("soft_limited", {}),  # soft_time_limit=3 on the task
        ("hard_limited", {}),  # time_limit=3 on the task
        ("quiet", {"DBOS_TEST_TASK_TIME_LIMIT": "3"}),  # the app's task_time_limit
    ],
)
def test_wait_longer_than_the_time_limit_parks_before_it(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, workflow: str,
    extra: dict[str, str],
) -> None:  # fmt: skip
    """recv(timeout=600) in a workflow whose task has a 3 s time limit, with
    park_after=30: the wait parks before the limit; the message, sent 6 s
    later, wakes it and the workflow returns it."""
    w = start_worker(env, workers, APP, name="w",
                     extra_env={"DBOS_TEST_PARK_AFTER": "30", **extra})  # fmt: skip
    handle = getattr(ns, workflow).start("go", 600.0, workflow_id="lim-1")
    parked = "SELECT status FROM {schema}.workflows WHERE id = 'lim-1'"
    wait_for(lambda: env.sql(parked) == [("WAITING",)], 20, w.describe)
    time.sleep(3.5)  # past the limit: nothing is running, so nothing is killed
    ns.durable.send("lim-1", "late", "go")
    assert handle.result(timeout=30) == "late", w.describe()
    log = w.log_path.read_text()
    assert "TimeLimitExceeded" not in log and "SoftTimeLimitExceeded" not in log, log[-3000:]
    assert env.sql("SELECT recovery_attempts FROM {schema}.workflows WHERE id = 'lim-1'") == [(0,)]
