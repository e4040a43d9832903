"""Time limits bound work: Celery's hard time limit that kills a step is
recorded once as that step's failure (the step's retry policy applies),
never a recovery loop; a soft time limit in a step is the step's exception;
a step that keeps killing its process (a signal, out of memory, a crash)
fails after a few attempts. Real prefork `celery worker` processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dbos_celery import MaxStepAttemptsError, StepProcessDiedError
from dbos_celery.step import MAX_STEP_DEATHS
from tests.apps.limits import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker

ns = app_fixture(build)

APP = "tests.apps.limits"
KILLED = "handled: step 'limits.slow' was killed by the task's hard time limit (2 s)"


def _recoveries(env: Env, wid: str) -> int:
    rows = env.sql("SELECT recovery_attempts FROM {schema}.workflows WHERE id = %s", wid)
    return int(rows[0][0])


@pytest.mark.parametrize(
    ("workflow", "extra"),
    [("hard", {}), ("unlimited", {"DBOS_TEST_TASK_TIME_LIMIT": "2"})],
    ids=["task time_limit", "app task_time_limit"],
)
def test_hard_time_limit_is_the_step_failure_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, workflow: str,
    extra: dict[str, str],
) -> None:  # fmt: skip
    w = start_worker(env, workers, APP, concurrency=1, extra_env=extra)
    handle = getattr(ns, workflow).start(30.0, workflow_id="hard")
    assert handle.result(timeout=40) == KILLED, w.describe()
    assert env.ledger("hard") == ["before", "slow", "handled"]
    assert _recoveries(env, "hard") == 1  # the one replay after the kill


def test_hard_time_limit_counts_as_an_attempt_of_the_retry_policy(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    w = start_worker(env, workers, APP, concurrency=1)
    handle = ns.hard_retried.start(30.0, workflow_id="retried")
    with pytest.raises(MaxStepAttemptsError) as got:
        handle.result(timeout=40)
    assert got.value.args[:2] == ("limits.slow_retried", 2), w.describe()
    assert got.value.args[2] == "StepTimeLimitExceeded('limits.slow_retried', 2.0)"
    assert env.ledger("retried") == ["slow", "slow"]


def test_soft_time_limit_in_a_step_is_the_step_exception(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    w = start_worker(env, workers, APP, concurrency=1)
    assert ns.soft.start(5.0, workflow_id="soft").result(timeout=30) == "soft", w.describe()
    assert env.ledger("soft") == ["slow", "soft"]
    assert _recoveries(env, "soft") == 0


def test_a_step_that_keeps_killing_its_process_fails_after_bounded_attempts(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    w = start_worker(env, workers, APP, concurrency=2)
    handle = ns.crashes.start(workflow_id="crash")
    with pytest.raises(StepProcessDiedError) as got:
        handle.result(timeout=60)
    assert "'limits.dies' died 3 time(s)" in str(got.value), w.describe()
    assert env.ledger("crash") == ["before"] + ["die"] * MAX_STEP_DEATHS
