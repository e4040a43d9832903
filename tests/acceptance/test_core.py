"""Core guarantees: runs once under duplicate deliveries and racing starts,
step retries, argument checks, inline calls, status and errors."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from dbos_celery import (
    ConflictingWorkflowIdError,
    InvalidArgumentError,
    MaxStepAttemptsError,
    NonExistentWorkflowError,
    ResultTimeoutError,
    SerializationError,
)
from dbos_celery.runner import execute
from dbos_celery.store import workflows
from tests.apps.core import OrderRejected, build, open_gate
from tests.support import (
    BACKENDS,
    Env,
    WorkerProcess,
    app_fixture,
    run_together,
    start_worker,
    wait_for,
)

pytestmark = BACKENDS

ns = app_fixture(build)

FIVE = ["step1", "step2", "step3", "step4", "step5"]


def _start(env: Env, workers: list[WorkerProcess], name: str, **kw: Any) -> WorkerProcess:
    return start_worker(env, workers, name=name, **kw)


def _effects(env: Env, workflow_id: str) -> Counter[str]:
    """How often each side effect ran (gate openings left out)."""
    return Counter(w for w in env.ledger(workflow_id) if not w.startswith("open:"))


def _queued_messages(env: Env) -> int:
    """Celery messages waiting in the test's broker queue."""
    broker = redis.Redis.from_url(env.broker_url)
    try:
        return int(broker.llen(env.queue))
    finally:
        broker.close()


def _only_workflow_id(ns: SimpleNamespace, name: str) -> str:
    [row] = ns.durable.list_workflows(name=name)
    return str(row.workflow_id)


# --- runs once ----------------------------------------------------------------


def test_duplicate_delivery_runs_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The same workflow id delivered three times to a 2-process prefork
    worker, two deliveries overlapping the running one: steps run once."""
    w = _start(env, workers, "w", concurrency=2)
    handle = ns.five_steps.start(gate_step=1, workflow_id="dup-1")
    ns.five_steps.task.apply_async(("dup-1",), task_id="dup-1")
    ns.durable.services.publish("dup-1", "core.five_steps")
    # both extra deliveries reach the free child while the first one holds
    # step 1, and return at once (dropped by the lease) without running it
    done = "Task core.five_steps[dup-1] succeeded"
    wait_for(lambda: w.log_path.read_text().count(done) == 2, 20, w.describe)
    log = w.log_path.read_text()
    assert log.count("Task core.five_steps[dup-1] received") == 3
    assert log.count("delivery dropped") == 2
    assert env.ledger("dup-1") == ["step1"]
    open_gate(env.schema, "dup-1", "step1")

    assert handle.result(timeout=30) == FIVE
    assert _effects(env, "dup-1") == dict.fromkeys(FIVE, 1), w.describe()
    assert handle.status().recovery_attempts == 0


def test_duplicate_delivery_during_run_is_dropped_by_lease(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """While worker A runs a workflow, executing the same id in another
    process returns at once without running anything or taking the lease."""
    a = _start(env, workers, "a")
    handle = ns.five_steps.start(gate_step=2, workflow_id="lease-1")
    wait_for(lambda: "step2" in env.ledger("lease-1"), 20, a.describe)
    owner = handle.status().executor_id
    assert owner is not None

    execute(
        ns.durable.services, "lease-1", ns.durable.workflows
    )  # a duplicate delivery, in this process

    assert env.ledger("lease-1") == ["step1", "step2"]
    status = handle.status()
    assert (status.status, status.executor_id) == ("PENDING", owner)
    assert owner != ns.durable.services.runtime().executor_id
    open_gate(env.schema, "lease-1", "step2")
    assert handle.result(timeout=30) == FIVE
    assert _effects(env, "lease-1") == dict.fromkeys(FIVE, 1)


def _start_same_id(env_vars: dict[str, str], workflow_id: str, barrier: Any, out: Any) -> None:
    """In a child process: its own app and Durable; start on the barrier."""
    ns = build(env_vars)
    try:
        ns.durable.migrate()
        barrier.wait(timeout=60)
        handle = ns.five_steps.start(workflow_id=workflow_id)
        out.put(("ok", handle.workflow_id))
    except BaseException as exc:
        out.put(("error", repr(exc)))
    finally:
        ns.durable.close()


def test_concurrent_starts_with_same_id_run_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Four processes start the same workflow id at the same moment: all get
    a handle, one row is written, one Celery message is published, and the
    workflow runs once."""
    n = 4
    results = run_together(n, _start_same_id, env.vars(), "same-1")
    assert results == [("ok", "same-1")] * n
    assert env.sql("SELECT count(*) FROM {schema}.workflows")[0][0] == 1
    assert _queued_messages(env) == 1  # only the process that inserted published

    _start(env, workers, "w")
    assert ns.durable.retrieve("same-1").result(timeout=30) == FIVE
    assert _effects(env, "same-1") == dict.fromkeys(FIVE, 1)


# --- steps ----------------------------------------------------------------------


def test_step_retries_with_growing_backoff(env: Env, ns: SimpleNamespace) -> None:
    """A step failing 3 times (max_attempts=4, interval=0.1, backoff=3) runs
    4 times, waiting longer before each retry, and is checkpointed once."""
    assert ns.retrying(3) == 4
    wid = _only_workflow_id(ns, "core.retrying")
    rows = env.sql("SELECT what, at FROM {schema}.ledger WHERE workflow_id = %s ORDER BY id", wid)
    assert [r[0] for r in rows] == ["attempt1", "attempt2", "attempt3", "attempt4"]
    at = [r[1] for r in rows]
    gaps = [at[i + 1] - at[i] for i in range(len(at) - 1)]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    steps = ns.durable.list_steps(wid)
    assert [(s.seq, s.name, s.output, s.error) for s in steps] == [(0, "core.flaky", 4, None)]


def test_exhausted_retries_raise_max_step_attempts(env: Env, ns: SimpleNamespace) -> None:
    """A step failing on every attempt raises MaxStepAttemptsError after
    max_attempts runs; the failure is checkpointed and fails the workflow."""
    with pytest.raises(MaxStepAttemptsError) as info:
        ns.exhausts()
    assert info.value.args[:2] == ("core.always_fails", 3)
    assert "the service is down" in str(info.value)
    wid = _only_workflow_id(ns, "core.exhausts")
    assert env.ledger(wid) == ["always_fails"] * 3
    [step] = ns.durable.list_steps(wid)
    assert step.name == "core.always_fails"
    assert step.error is not None and step.error.startswith("MaxStepAttemptsError")
    assert ns.durable.retrieve(wid).status().status == "ERROR"


# --- arguments and errors --------------------------------------------------------


def test_unserializable_input_raises_and_writes_nothing(env: Env, ns: SimpleNamespace) -> None:
    ns.durable.migrate()
    with pytest.raises(SerializationError):
        ns.echo.start(object(), workflow_id="bad-input")
    with pytest.raises(SerializationError):
        ns.echo(object())  # inline: checked before the row too
    assert env.sql("SELECT count(*) FROM {schema}.workflows")[0][0] == 0
    assert _queued_messages(env) == 0


@pytest.mark.parametrize("bad_id", [42, "", "x" * 256, "nul\x00id"])
def test_invalid_workflow_id_raises_and_writes_nothing(
    env: Env, ns: SimpleNamespace, bad_id: Any
) -> None:
    ns.durable.migrate()
    with pytest.raises(InvalidArgumentError):
        ns.echo.start(1, workflow_id=bad_id)
    assert env.sql("SELECT count(*) FROM {schema}.workflows")[0][0] == 0
    assert _queued_messages(env) == 0


def test_retrieve_unknown_workflow_raises(env: Env, ns: SimpleNamespace) -> None:
    with pytest.raises(NonExistentWorkflowError):
        ns.durable.retrieve("unknown")


def test_result_of_workflow_that_never_runs_times_out(env: Env, ns: SimpleNamespace) -> None:
    """result(timeout) raises ResultTimeoutError (a TimeoutError) and leaves
    the workflow as it was."""
    d = ns.durable
    inputs = d.services.codec.dumps({"args": [], "kwargs": {}})
    assert d.services.store.run(workflows.insert_workflow, "idle-1", "core.echo", inputs, None)
    handle = d.retrieve("idle-1")
    with pytest.raises(ResultTimeoutError) as info:
        handle.result(timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert handle.status().status == "ENQUEUED"


# --- inline calls, status, workflow errors ----------------------------------------


def test_inline_call_runs_durably_and_returns_result(env: Env, ns: SimpleNamespace) -> None:
    assert ns.echo(1, b=2) == {"args": [1], "kwargs": {"b": 2}}
    rows = env.sql("SELECT name, status FROM {schema}.workflows")
    assert rows == [("core.echo", "SUCCESS")]

    wid = _only_workflow_id(ns, "core.echo")
    st = ns.durable.retrieve(wid).status()
    assert (st.workflow_id, st.name, st.status) == (wid, "core.echo", "SUCCESS")
    assert (st.recovery_attempts, st.parent_id, st.error) == (0, None, None)
    assert st.executor_id == ns.durable.services.runtime().executor_id
    assert st.created_at.tzinfo is not None and st.created_at <= st.updated_at
    assert ns.durable.retrieve(wid).result(timeout=5) == {"args": [1], "kwargs": {"b": 2}}


def test_failing_workflow_has_status_error_and_reraises_original_type(
    env: Env, ns: SimpleNamespace
) -> None:
    with pytest.raises(OrderRejected) as info:
        ns.rejects("o-7")
    assert info.value.args == ("o-7",)
    wid = _only_workflow_id(ns, "core.rejects")
    handle = ns.durable.retrieve(wid)
    st = handle.status()
    assert st.status == "ERROR"
    assert st.error == "OrderRejected: o-7"
    with pytest.raises(OrderRejected) as again:  # read back from the database
        handle.result(timeout=5)
    assert again.value.args == ("o-7",)


def test_start_with_an_id_of_another_workflow_is_refused(env: Env, ns: SimpleNamespace) -> None:
    ns.echo.start(1, workflow_id="shared-id")
    assert ns.echo.start(2, workflow_id="shared-id").workflow_id == "shared-id"  # idempotent
    with pytest.raises(ConflictingWorkflowIdError) as info:
        ns.five_steps.start(workflow_id="shared-id")
    assert "core.echo" in str(info.value) and "core.five_steps" in str(info.value)
    assert env.sql("SELECT name FROM {schema}.workflows") == [("core.echo",)]
