"""Crash recovery with real worker processes killed by SIGKILL."""

from __future__ import annotations

import os
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from dbos_celery import NonDeterministicWorkflowError, WorkflowFailedError
from dbos_celery.recovery.sweep import DRAIN_SLACK
from dbos_celery.store import workflows
from tests.apps.core import build, open_gate
from tests.pgcluster import PrivateRedis
from tests.support import BACKENDS, Env, WorkerProcess, app_fixture, start_worker, wait_for

pytestmark = BACKENDS

ns = app_fixture(build)

FIVE = ["step1", "step2", "step3", "step4", "step5"]


def _start(env: Env, workers: list[WorkerProcess], name: str, **kw: Any) -> WorkerProcess:
    return start_worker(env, workers, name=name, **kw)


def _checkpoints(env: Env, workflow_id: str) -> int:
    return env.sql("SELECT count(*) FROM {schema}.steps WHERE workflow_id = %s", workflow_id)[0][0]


def _effects(env: Env, workflow_id: str) -> Counter[str]:
    """How often each side effect ran (gate openings left out)."""
    return Counter(w for w in env.ledger(workflow_id) if not w.startswith("open:"))


def _running_on(env: Env, workflow_id: str, candidates: list[WorkerProcess]) -> WorkerProcess:
    """The worker whose pool child holds the lease (executor id host:pid:...)."""
    executor = env.sql("SELECT executor_id FROM {schema}.workflows WHERE id = %s", workflow_id)
    pid = int(executor[0][0].split(":")[1])
    pgid = os.getpgid(pid)
    [owner] = [w for w in candidates if w.proc.pid == pgid]
    return owner


def test_step_committed_before_kill_never_reruns(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The only worker is SIGKILLed in step 4, after steps 1-3 committed; a
    restarted worker replays 1-3 from their checkpoints and finishes."""
    first = _start(env, workers, "first")
    handle = ns.five_steps.start(gate_step=4, workflow_id="replay-1")
    wait_for(lambda: "step4" in env.ledger("replay-1"), 20, first.describe)
    assert _checkpoints(env, "replay-1") == 3
    first.kill()
    open_gate(env.schema, "replay-1", "step4")

    second = _start(env, workers, "second")
    assert handle.result(timeout=30) == FIVE
    counts = _effects(env, "replay-1")
    # 1-3 committed before the kill: never again; 4 was interrupted: again
    assert counts == {"step1": 1, "step2": 1, "step3": 1, "step4": 2, "step5": 1}, second.describe()
    status = handle.status()
    assert status.status == "SUCCESS"
    assert status.recovery_attempts == 1
    assert _checkpoints(env, "replay-1") == 5


def test_survivor_worker_takes_over_killed_workflow(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Two workers; the one running the workflow is SIGKILLed; the other one,
    never restarted, notices the missing heartbeat and finishes it."""
    pair = [_start(env, workers, "a"), _start(env, workers, "b")]
    handle = ns.five_steps.start(gate_step=3, workflow_id="survive-1")
    wait_for(lambda: "step3" in env.ledger("survive-1"), 20)
    victim = _running_on(env, "survive-1", pair)
    [survivor] = [w for w in pair if w is not victim]
    victim.kill()
    open_gate(env.schema, "survive-1", "step3")

    assert handle.result(timeout=30) == FIVE, survivor.describe()
    counts = _effects(env, "survive-1")
    assert counts == {"step1": 1, "step2": 1, "step3": 2, "step4": 1, "step5": 1}
    assert handle.status().recovery_attempts == 1
    assert _running_on(env, "survive-1", pair) is survivor


def test_recorded_step_errors_reraise_on_replay_without_rerunning(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A step that raised KeyError and a step that exhausted its retries
    (MaxStepAttemptsError) are checkpointed: after a kill the replay raises
    the same exception types again and neither step runs again."""
    first = _start(env, workers, "first")
    handle = ns.errors_then_gate.start(workflow_id="errors-1")
    wait_for(lambda: "after" in env.ledger("errors-1"), 20, first.describe)
    assert _effects(env, "errors-1") == {"boom": 1, "always_fails": 3, "after": 1}
    first.kill()
    open_gate(env.schema, "errors-1", "after")

    _start(env, workers, "second")
    assert handle.result(timeout=30) == [
        "KeyError:no such order",
        "MaxStepAttemptsError:core.always_fails:3",
    ]
    assert _effects(env, "errors-1") == {"boom": 1, "always_fails": 3, "after": 2}
    assert handle.status().recovery_attempts == 1


def test_nondeterministic_replay_raises_naming_both_steps(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The workflow's branch depends on a value read outside any step; the
    value changes while the worker is dead; the replay asks for another step
    than the one recorded and fails with NonDeterministicWorkflowError."""
    first = _start(env, workers, "first")
    handle = ns.branching.start(workflow_id="branch-1")
    wait_for(lambda: "wait" in env.ledger("branch-1"), 20, first.describe)
    assert _effects(env, "branch-1") == {"branch_a": 1, "wait": 1}
    first.kill()
    env.sql("INSERT INTO {schema}.ledger (workflow_id, what) VALUES (%s, 'flip')", "branch-1")
    open_gate(env.schema, "branch-1", "wait")

    second = _start(env, workers, "second")
    with pytest.raises(NonDeterministicWorkflowError) as info:
        handle.result(timeout=30)
    assert "core.branch_a" in str(info.value) and "core.branch_b" in str(info.value)
    assert handle.status().status == "ERROR"
    # the replay stopped at the mismatch: branch_b never ran, nothing re-ran
    assert _effects(env, "branch-1") == {"branch_a": 1, "wait": 1, "flip": 1}, second.describe()


def test_max_recovery_attempts_exceeded_fails_workflow(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """With max_recovery_attempts=1 a workflow whose worker dies twice is not
    run a third time: it ends MAX_RECOVERY_ATTEMPTS_EXCEEDED and result()
    raises WorkflowFailedError."""
    extra = {"DBOS_TEST_MAX_RECOVERY_ATTEMPTS": "1"}
    handle = ns.five_steps.start(gate_step=2, workflow_id="doomed-1")  # gate never opens
    for run in (1, 2):
        w = _start(env, workers, f"run{run}", extra_env=extra)
        wait_for(lambda r=run: env.ledger("doomed-1").count("step2") == r, 20, w.describe)
        w.kill()
    last = _start(env, workers, "last", extra_env=extra)

    with pytest.raises(WorkflowFailedError) as info:
        handle.result(timeout=30)
    assert "MAX_RECOVERY_ATTEMPTS_EXCEEDED" in str(info.value)
    status = handle.status()
    assert status.status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
    assert status.recovery_attempts == 2
    assert _effects(env, "doomed-1") == {"step1": 1, "step2": 2}, last.describe()


def test_row_committed_but_never_published_is_swept_and_runs(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A crash between start()'s commit and its Celery publish leaves an
    ENQUEUED row and no message; the recovery sweep publishes it."""
    d = ns.durable
    inputs = d.services.codec.dumps({"args": [], "kwargs": {}})
    assert d.services.store.run(
        workflows.insert_workflow, "orphan-1", "core.five_steps", inputs, None
    )
    broker = redis.Redis.from_url(env.broker_url)
    try:
        assert broker.llen(env.queue) == 0  # really never published
    finally:
        broker.close()

    w = _start(env, workers, "sweeper", extra_env={"DBOS_TEST_ENQUEUED_TIMEOUT": "0.3"})
    assert d.retrieve("orphan-1").result(timeout=30) == FIVE, w.describe()
    assert _effects(env, "orphan-1") == dict.fromkeys(FIVE, 1)
    assert "recovering workflow orphan-1" in w.log_path.read_text()


def test_a_row_whose_message_was_never_published_waits_out_a_broker_outage(
    env: Env, services: None
) -> None:
    """A row committed but never published (a crash between the two, or the
    broker down). While the broker cannot be asked, the sweep falls back on
    the row's age: its publish fails, and that must not count as a step of
    backoff (a long outage would push the next publish hours away). Once
    the broker is back, the sweep sees the queue empty and, a slack later,
    publishes it."""
    broker = PrivateRedis()
    broker.start()
    env.broker_url = broker.url.replace("/0", "/1")
    env.extra["DBOS_TEST_ENQUEUED_TIMEOUT"] = "1"
    ns = build(env.vars())
    d = ns.durable
    try:
        inputs = d.services.codec.dumps({"args": [], "kwargs": {}})
        assert d.services.store.run(
            workflows.insert_workflow, "unsent", "core.five_steps", inputs, None
        )
        broker.stop()
        time.sleep(1.2)  # older than enqueued_timeout
        for _ in range(3):  # three sweeps while the broker is down
            with pytest.raises(Exception):  # noqa: B017 - the broker's own error
                d.sweep()
            assert _publish_count(env, "unsent") == 0
        broker.start()
        assert d.sweep() == []  # the queue is seen empty now: it vouches after the slack
        time.sleep(DRAIN_SLACK)
        assert [r.id for r in d.sweep()] == ["unsent"]
        assert _publish_count(env, "unsent") == 1
        queue = redis.Redis.from_url(env.broker_url)
        assert queue.llen(env.queue) == 1  # published
        queue.close()
    finally:
        d.close()
        broker.stop()


def _publish_count(env: Env, workflow_id: str) -> int | None:
    rows = env.sql("SELECT publish_count FROM {schema}.workflows WHERE id = %s", workflow_id)
    return int(rows[0][0]) if rows else None
