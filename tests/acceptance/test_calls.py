"""durable.call / durable.gather of existing Celery tasks, and child
workflows, with real worker processes SIGKILLed.

Workflows run on the test's queue; the tasks they call are routed to
``<queue>_tasks``, served by worker processes of their own (prefork).
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.exceptions import TaskRevokedError

from dbos_celery import (
    CallWouldDeadlockError,
    NonDeterministicWorkflowError,
    NotInWorkflowError,
)
from tests.apps.calls import TaskRejected, build
from tests.apps.core import open_gate
from tests.support import Env, WorkerProcess, app_fixture, wait_for

ns = app_fixture(build)

APP = "tests.apps.calls"


def _workers(env: Env, started: list[WorkerProcess], **specs: dict[str, Any]) -> list[Any]:
    """Start named workers at once, then wait until all are ready."""
    made = []
    for name, kw in specs.items():
        w = WorkerProcess(env, APP, name=name, **kw)
        started.append(w)
        made.append(w)
    return [w.wait_ready() for w in made]


def _tasks(env: Env) -> str:
    return f"{env.queue}_tasks"


def _runs(env: Env, workflow_id: str) -> Counter[str]:
    """How often each task (or gated step) ran for a workflow."""
    return Counter(w for w in env.ledger(workflow_id) if not w.startswith("open:"))


def _call_outcomes(env: Env, workflow_id: str) -> int:
    return env.sql(
        "SELECT count(*) FROM {schema}.steps "
        "WHERE workflow_id = %s AND name LIKE 'durable.call:%%'",
        workflow_id,
    )[0][0]


def _step_names(env: Env, workflow_id: str) -> list[str]:
    rows = env.sql(
        "SELECT name FROM {schema}.steps WHERE workflow_id = %s ORDER BY seq", workflow_id
    )
    return [r[0] for r in rows]


def test_recovered_workflow_never_resends_finished_or_running_calls(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A workflow calls three tasks on a second queue served by another
    worker process. Its own worker is SIGKILLed after the second task
    finished, while the third runs: after recovery the replay returns tasks
    1 and 2 from their checkpoints and waits for the running task 3 instead
    of sending it again; each task ran once."""
    a, tasks = _workers(env, workers, wf={}, tasks={"queues": _tasks(env)})
    handle = ns.three.start(workflow_id="three-1")
    wait_for(lambda: "t3" in env.ledger("three-1"), 20, a.describe)
    assert _call_outcomes(env, "three-1") == 2
    a.kill()

    _workers(env, workers, wf2={})
    wait_for(lambda: handle.status().recovery_attempts == 1, 20)
    open_gate(env.schema, "three-1", "t3")
    assert handle.result(timeout=30) == ["T1", "T2", "T3"], tasks.describe()
    assert _runs(env, "three-1") == {"t1": 1, "t2": 1, "t3": 1}
    ids = env.ledger("id:three-1")
    assert ids == ["dbos-three-1-0", "dbos-three-1-2", "dbos-three-1-4"]
    assert (
        _step_names(env, "three-1")
        == [
            "durable.call:calls.t.record",
            "durable.dispatch:calls.t.record",
        ]
        * 3
    )


def test_task_whose_worker_died_mid_task_is_resent_with_same_id(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The worker running a called task is SIGKILLed mid-task (with Celery's
    default early ack its message is gone). The waiting workflow sees that
    worker stop heartbeating and sends the task again, with the same task
    id; another worker runs it and the workflow completes without being
    recovered itself."""
    wf, first = _workers(env, workers, wf={}, tasks1={"queues": _tasks(env)})
    handle = ns.one.start("slow", True, workflow_id="lost-1")
    wait_for(lambda: "slow" in env.ledger("lost-1"), 20, first.describe)
    first.kill()
    open_gate(env.schema, "lost-1", "slow")

    _workers(env, workers, tasks2={"queues": _tasks(env)})
    assert handle.result(timeout=30) == "SLOW", wf.describe()
    assert _runs(env, "lost-1") == {"slow": 2}
    assert env.ledger("id:lost-1") == ["dbos-lost-1-0"] * 2
    assert handle.status().recovery_attempts == 0
    assert "sending it again" in wf.log_path.read_text()


def test_call_whose_message_was_lost_is_resent_after_redispatch_timeout(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The broker loses a call's message before any worker took it: no
    worker starts the task, so after call_redispatch_after the waiting
    workflow sends it again (same id) and the task runs once. (3 s: a second
    re-send, 6 s later, must not come before the task worker, started only
    now, takes the first; on a loaded machine 1.5 s was too short.)"""
    extra = {"DBOS_TEST_CALL_REDISPATCH_AFTER": "3"}
    [wf] = _workers(env, workers, wf={"extra_env": extra})
    handle = ns.one.start("lost-msg", workflow_id="msg-1")
    wait_for(lambda: len(_step_names(env, "msg-1")) == 1, 20, wf.describe)
    broker = redis.Redis.from_url(env.broker_url)
    try:
        wait_for(lambda: broker.llen(_tasks(env)) == 1, 5)
        assert broker.delete(_tasks(env)) == 1  # the message is gone
    finally:
        broker.close()

    _workers(env, workers, tasks={"queues": _tasks(env)})
    assert handle.result(timeout=30) == "LOST-MSG", wf.describe()
    assert _runs(env, "msg-1") == {"lost-msg": 1}
    assert "no worker started it within 3 s" in wf.log_path.read_text()


def test_revoked_call_is_recorded_as_task_revoked_error(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Celery's verdict on a revoked task is the call's outcome: the task id
    is known in advance (dbos-{workflow_id}-{seq}), so it can be revoked
    before it is sent; the call raises TaskRevokedError and the task never
    runs (nor is it sent again)."""
    wf, _ = _workers(env, workers, wf={}, tasks={"queues": _tasks(env)})
    replies = ns.app.control.revoke("dbos-rev-1-0", reply=True, timeout=2)
    assert replies, "no worker confirmed the revoke"
    with pytest.raises(TaskRevokedError):
        ns.one.start("never", workflow_id="rev-1").result(timeout=30)
    assert _runs(env, "rev-1") == {}
    assert "sending it again" not in wf.log_path.read_text()


def test_cancelled_workflow_stops_waiting_for_its_call(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A workflow waiting for a running task is cancelled: it stops waiting
    at once (its worker slot is free again), and the task's later outcome
    does not revive it."""
    wf, _ = _workers(env, workers, wf={"concurrency": 1}, tasks={"queues": _tasks(env)})
    handle = ns.one.start("held", True, workflow_id="cx-1")
    wait_for(lambda: "held" in env.ledger("cx-1"), 20, wf.describe)
    assert ns.durable.cancel("cx-1")
    # the single slot runs another workflow while the held task still runs
    assert ns.one.start("next", workflow_id="cx-2").result(timeout=10) == "NEXT", wf.describe()
    assert _call_outcomes(env, "cx-1") == 0
    open_gate(env.schema, "cx-1", "held")
    wait_for(lambda: _call_outcomes(env, "cx-1") == 1, 10)  # the task finished
    assert handle.status().status == "CANCELLED"


def test_gather_returns_in_order_and_raises_first_failure_after_all_settled(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """gather of 20 tasks on a concurrency-2 task worker: results come back
    in call order; when one task fails at once, the gather still waits for
    the 19 others to settle, then raises that task's own exception type."""
    _wf, tasks = _workers(env, workers, wf={}, tasks={"queues": _tasks(env), "concurrency": 2})
    ok = ns.fan_out.start(20, workflow_id="fan-ok")
    bad = ns.fan_out.start(20, 0, workflow_id="fan-bad")
    assert ok.result(timeout=40) == {"results": [f"G{i}" for i in range(20)]}, tasks.describe()
    assert bad.result(timeout=40) == {"error": "g0", "settled": 20}
    assert _runs(env, "fan-bad") == {f"g{i}": 1 for i in range(20)}
    # the workflow caught the failure as `except TaskRejected`: its own type
    assert ns.durable.list_steps("fan-bad")[0].error == f"{TaskRejected.__name__}: g0"


def test_crash_mid_gather_resends_only_unfinished_calls(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A machine holding both the workflow and the task worker dies in the
    middle of a gather: two calls have finished, two are running. After
    recovery only the two unfinished ones are sent again."""
    wf, tasks = _workers(env, workers, wf={}, tasks={"queues": _tasks(env), "concurrency": 2})
    handle = ns.fan_gated.start(2, 2, workflow_id="mid-1")
    wait_for(
        lambda: _call_outcomes(env, "mid-1") == 2 and {"s0", "s1"} <= set(env.ledger("mid-1")),
        20,
        tasks.describe,
    )
    wf.kill()
    tasks.kill()
    open_gate(env.schema, "mid-1", "s0")
    open_gate(env.schema, "mid-1", "s1")

    wf2, _ = _workers(env, workers, wf2={}, tasks2={"queues": _tasks(env)})
    assert handle.result(timeout=30) == ["Q0", "Q1", "S0", "S1"], wf2.describe()
    assert _runs(env, "mid-1") == {"q0": 1, "q1": 1, "s0": 2, "s1": 2}


def test_call_to_own_queue_on_single_slot_worker_raises_instead_of_deadlocking(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """On a concurrency-1 worker that never parks, a call routed to a queue
    that worker consumes could never run (the waiting workflow holds the
    only slot): it raises CallWouldDeadlockError naming the queue, and
    nothing is sent or recorded. The same workflow calling the task on
    another queue works."""
    never_park = {"DBOS_TEST_PARK_AFTER": "none"}
    wf, _ = _workers(
        env, workers, wf={"concurrency": 1, "extra_env": never_park},
        tasks={"queues": _tasks(env)},
    )  # fmt: skip
    fine = ns.on_queue.start(_tasks(env), "elsewhere", workflow_id="q-ok")
    assert fine.result(timeout=30) == "ELSEWHERE", wf.describe()

    stuck = ns.on_queue.start(env.queue, "same", workflow_id="q-same")
    with pytest.raises(CallWouldDeadlockError) as info:
        stuck.result(timeout=30)
    assert repr(env.queue) in str(info.value)
    assert _step_names(env, "q-same") == []
    assert env.ledger("q-same") == []


def test_call_to_own_queue_on_single_slot_worker_parks_and_completes(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The same call with parking on: the workflow parks after park_after,
    which frees the only slot for its task; the outcome wakes it again."""
    wf = _workers(env, workers, wf={"concurrency": 1, "extra_env": {"DBOS_TEST_PARK_AFTER": "0.2"}})
    handle = ns.on_queue.start(env.queue, "same", workflow_id="q-park")
    assert handle.result(timeout=30) == "SAME", wf[0].describe()
    assert _runs(env, "q-park") == {"same": 1}
    # two runs on the one slot: the one that parked, and the one woken (Celery
    # logs a run's end just after the workflow's outcome commits: wait for it)
    done = "calls.on_queue[q-park] succeeded"
    wait_for(lambda: wf[0].log_path.read_text().count(done) >= 2, 10, wf[0].describe)
    runs = wf[0].log_path.read_text().count(done)
    assert runs == 2, wf[0].describe()


def test_child_started_once_and_parent_gets_its_result_after_parent_crash(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """The parent starts a child (run by another worker) and waits for its
    result; the parent's worker is SIGKILLed. The recovered parent replays
    the checkpointed start (the same child, not a second one) and the
    checkpointed wait returns the child's result."""
    a, b = _workers(env, workers, wf={}, tasks={"queues": _tasks(env)})
    handle = ns.parent.start(7, workflow_id="p-1")
    wait_for(
        lambda: "child-run" in env.ledger("p-1-0") and "parent-run" in env.ledger("p-1"),
        20,
        a.describe,
    )
    a.kill()
    _workers(env, workers, wf2={})
    wait_for(lambda: env.ledger("p-1").count("parent-run") == 2, 20)  # replayed past start
    open_gate(env.schema, "p-1-0", "child")

    assert handle.result(timeout=30) == {"child": "p-1-0", "result": 14}, b.describe()
    children = ns.durable.list_workflows(parent="p-1")
    assert [(c.workflow_id, c.status, c.recovery_attempts) for c in children] == [
        ("p-1-0", "SUCCESS", 0)
    ]
    assert env.ledger("p-1-0").count("child-run") == 1
    assert handle.status().recovery_attempts == 1
    assert _step_names(env, "p-1") == ["durable.start:calls.child", "durable.result"]


def test_call_with_rabbitmq_broker(amqp_env: Env, workers: list[WorkerProcess]) -> None:
    """The same call path with RabbitMQ as the Celery broker: the task runs
    on another worker process, once, and its result comes back."""
    env = amqp_env
    ns = build(env.vars())
    try:
        wf, _ = _workers(env, workers, wf={}, tasks={"queues": _tasks(env)})
        handle = ns.one.start("rabbit", workflow_id="amqp-call-1")
        assert handle.result(timeout=30) == "RABBIT", wf.describe()
        assert _runs(env, "amqp-call-1") == {"rabbit": 1}
    finally:
        ns.durable.close()


def test_call_outside_workflow_or_in_step_raises_not_in_workflow(
    env: Env, ns: SimpleNamespace
) -> None:
    """durable.call and durable.gather outside a workflow, or inside a step,
    raise NotInWorkflowError and send nothing."""
    d = ns.durable
    with pytest.raises(NotInWorkflowError, match="durable.call"):
        d.call(ns.record, "x", "y")
    with pytest.raises(NotInWorkflowError, match="durable.gather"):
        d.gather(d.task(ns.record, "x", "y"))
    # a workflow run inline in this process: the step's call fails, recorded
    assert ns.in_step().startswith("NotInWorkflowError: durable.call can only be called")
    assert env.sql("SELECT name FROM {schema}.steps") == [("calls.call_from_step",)]


def test_replay_calling_another_task_raises_nondeterministic(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A workflow called task A; while its worker is dead the (non-step)
    value it branches on changes, and the replay calls task B at the same
    checkpoint: NonDeterministicWorkflowError naming both, and B never runs."""
    spec = {"queues": f"{env.queue},{_tasks(env)}"}
    [first] = _workers(env, workers, first=spec)
    handle = ns.branching.start(workflow_id="branch-1")
    wait_for(lambda: "wait" in env.ledger("branch-1"), 20, first.describe)
    first.kill()
    env.sql("INSERT INTO {schema}.ledger (workflow_id, what) VALUES (%s, 'flip')", "branch-1")
    open_gate(env.schema, "branch-1", "wait")

    [second] = _workers(env, workers, second=spec)
    with pytest.raises(NonDeterministicWorkflowError) as info:
        handle.result(timeout=30)
    text = str(info.value)
    assert "durable.call:calls.t.record'" in text and "durable.call:calls.t.record_b" in text
    assert _runs(env, "branch-1") == {"x": 1, "wait": 1, "flip": 1}, second.describe()


def test_late_copy_of_a_settled_call_is_revoked_not_run(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A second copy of a call's task (sent again while the first was only
    late) waits in a busy worker while the first copy records the outcome:
    that worker revokes its copy instead of running the task again."""
    dup_q = f"{env.queue}_dup"
    wf, first, busy = _workers(
        env, workers, wf={}, first={"queues": _tasks(env), "concurrency": 1},
        busy={"queues": dup_q, "concurrency": 1},
    )  # fmt: skip
    handle = ns.one.start("x", True, workflow_id="late")
    wait_for(lambda: "x" in env.ledger("late"), 20, first.describe)  # copy 1 runs, gated
    [task_id] = env.ledger("id:late")
    record = ns.app.tasks["calls.t.record"]
    record.apply_async(("blocker", "b"), {"hold": 4.0}, queue=dup_q)
    wait_for(lambda: "b" in env.ledger("blocker"), 20, busy.describe)
    # copy 2, with the same task id and arguments, waits behind the blocker
    record.apply_async(("late", "x"), {"gate": True}, task_id=task_id, queue=dup_q)
    wait_for(lambda: f"Task calls.t.record[{task_id}] received" in busy.log_path.read_text(), 20)
    open_gate(env.schema, "late", "x")
    assert handle.result(timeout=30) == "X"
    wait_for(lambda: f"{task_id}] succeeded" in first.log_path.read_text(), 20)
    wait_for(lambda: "Discarding revoked task" in busy.log_path.read_text(), 20, busy.describe)
    assert _runs(env, "late") == {"x": 1}, busy.describe()
    assert env.ledger("id:late") == [task_id]
    assert _call_outcomes(env, "late") == 1


def test_copy_of_a_settled_call_arriving_at_an_idle_worker_is_not_run(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A copy of a call's task sent again while the first was only queued
    reaches a worker with a free slot after the first copy recorded the
    outcome: the worker discards it on arrival instead of running it."""
    dup_q = f"{env.queue}_dup"
    wf, tasks, idle = _workers(
        env, workers, wf={}, tasks={"queues": _tasks(env)}, idle={"queues": dup_q},
    )  # fmt: skip
    handle = ns.one.start("x", workflow_id="again")
    assert handle.result(timeout=30) == "X"
    [task_id] = env.ledger("id:again")
    record = ns.app.tasks["calls.t.record"]
    record.apply_async(("again", "x"), task_id=task_id, queue=dup_q)
    wait_for(lambda: "Discarding revoked task" in idle.log_path.read_text(), 20, idle.describe)
    assert _runs(env, "again") == {"x": 1}, idle.describe()
    assert _call_outcomes(env, "again") == 1
