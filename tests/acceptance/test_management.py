"""Cancel, resume, fork, durable sleep and workflow timeouts, with real
`celery worker` processes (SIGKILLed where a test says kill).

A run that stops because of a cancel logs "workflow <id> was cancelled;
stopped" in its worker: tests wait for that line to know the run ended
(its Celery slot is free again), not only that the row says CANCELLED.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from dbos_celery import (
    Durable,
    InvalidArgumentError,
    NonExistentWorkflowError,
    WorkflowFailedError,
    WorkflowNotResumableError,
)
from dbos_celery.store import migrations, workflows
from tests.apps.core import open_gate
from tests.apps.manage import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)

APP = "tests.apps.manage"


def _start(env: Env, workers: list[WorkerProcess], name: str, **kw: Any) -> WorkerProcess:
    return start_worker(env, workers, APP, name=name, **kw)


def _effects(env: Env, workflow_id: str) -> Counter[str]:
    """How often each side effect ran (gate openings left out)."""
    return Counter(w for w in env.ledger(workflow_id) if not w.startswith("open:"))


def _ledger_at(env: Env, workflow_id: str, what: str) -> list[float]:
    rows = env.sql(
        "SELECT at FROM {schema}.ledger WHERE workflow_id = %s AND what = %s ORDER BY id",
        workflow_id,
        what,
    )
    return [float(r[0]) for r in rows]


def _checkpoint_names(ns: SimpleNamespace, workflow_id: str) -> list[tuple[int, str, Any]]:
    return [(st.seq, st.name, st.output) for st in ns.durable.list_steps(workflow_id)]


def _has_checkpoint(env: Env, workflow_id: str, name: str) -> bool:
    rows = env.sql(
        "SELECT 1 FROM {schema}.steps WHERE workflow_id = %s AND name = %s", workflow_id, name
    )
    return bool(rows)


def _stopped(worker: WorkerProcess, workflow_id: str) -> bool:
    return f"workflow {workflow_id} was cancelled; stopped" in worker.log_path.read_text()


def _raises_cancelled(ns: SimpleNamespace, workflow_id: str) -> None:
    with pytest.raises(WorkflowFailedError) as info:
        ns.durable.retrieve(workflow_id).result(timeout=5)
    assert "CANCELLED" in str(info.value)


# --- cancel -------------------------------------------------------------------


def test_cancelled_running_workflow_stops_at_next_step_and_resumes_from_checkpoints(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Cancelled while step s1 runs: s1 finishes but its checkpoint is not
    kept, s2.. never run, and the user's ``except Exception`` around every
    step does not swallow the cancel. Resumed: s0 replays from its
    checkpoint, s1 runs again, the workflow completes."""
    w = _start(env, workers, "w")
    handle = ns.steps.start(5, 1, workflow_id="run-1")
    wait_for(lambda: "s1" in env.ledger("run-1"), 20, w.describe)
    assert ns.durable.cancel("run-1") is True
    assert handle.status().status == "CANCELLED"
    _raises_cancelled(ns, "run-1")
    open_gate(env.schema, "run-1", "s1")

    wait_for(lambda: _stopped(w, "run-1"), 10, w.describe)
    assert _effects(env, "run-1") == {"s0": 1, "s1": 1}  # nothing swallowed, s2.. never ran
    assert _checkpoint_names(ns, "run-1") == [(0, "mgmt.mark", "s0")]
    assert handle.status().status == "CANCELLED"
    assert ns.durable.cancel("run-1") is False  # ended already: a no-op

    resumed = ns.durable.resume("run-1")
    assert resumed.result(timeout=30) == ["s0", "s1", "s2", "s3", "s4"]
    assert _effects(env, "run-1") == {"s0": 1, "s1": 2, "s2": 1, "s3": 1, "s4": 1}
    status = resumed.status()
    assert (status.status, status.recovery_attempts) == ("SUCCESS", 0)
    # finished: cancel changes nothing, resume refuses (fork runs it again)
    assert ns.durable.cancel("run-1") is False
    assert resumed.status().status == "SUCCESS"
    with pytest.raises(WorkflowNotResumableError):
        ns.durable.resume("run-1")


def test_cancel_wakes_waiting_and_sleeping_workflows_at_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """One workflow waits in recv (60 s), one sleeps (60 s), and the worker
    polls only every 30 s: a cancel still ends both runs within seconds,
    and neither goes past its wait. A message sent afterwards stays
    unconsumed."""
    w = _start(env, workers, "w", extra_env={"DBOS_TEST_POLL_INTERVAL": "30"})
    waiting = ns.waits.start("t", 60.0, workflow_id="wait-1")
    sleeping = ns.sleeps.start(60.0, workflow_id="sleep-1")
    wait_for(lambda: _has_checkpoint(env, "wait-1", "durable.deadline"), 20, w.describe)
    wait_for(lambda: _has_checkpoint(env, "sleep-1", "durable.sleep"), 20, w.describe)

    cancelled_at = time.monotonic()
    assert ns.durable.cancel("wait-1") and ns.durable.cancel("sleep-1")
    wait_for(lambda: _stopped(w, "wait-1") and _stopped(w, "sleep-1"), 15, w.describe)
    assert time.monotonic() - cancelled_at < 5.0, "a cancelled wait ran on towards its timeout"

    ns.durable.send("wait-1", "too late", "t")
    _raises_cancelled(ns, "wait-1")
    _raises_cancelled(ns, "sleep-1")
    assert _effects(env, "wait-1") == {"before": 1}
    assert _effects(env, "sleep-1") == {"run": 1}
    assert env.sql("SELECT count(*) FROM {schema}.messages")[0][0] == 1
    assert waiting.status().status == sleeping.status().status == "CANCELLED"


def test_cancelled_enqueued_workflow_never_runs_until_resumed(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Cancelled before any worker received it: its Celery message is
    delivered and dropped, nothing runs. Resumed, it runs once."""
    handle = ns.steps.start(2, workflow_id="enq-1")
    assert ns.durable.cancel("enq-1") is True
    w = _start(env, workers, "w")
    wait_for(lambda: "enq-1 is running elsewhere or finished" in w.log_path.read_text(), 20,
             w.describe)  # fmt: skip
    assert env.ledger("enq-1") == []
    assert handle.status().status == "CANCELLED"
    _raises_cancelled(ns, "enq-1")

    assert ns.durable.resume("enq-1").result(timeout=30) == ["s0", "s1"]
    assert _effects(env, "enq-1") == {"s0": 1, "s1": 1}


def test_management_calls_on_unknown_workflows_raise_and_write_nothing(
    env: Env, ns: SimpleNamespace
) -> None:
    for call in (
        lambda: ns.durable.cancel("nope"),
        lambda: ns.durable.resume("nope"),
        lambda: ns.durable.fork("nope", 0),
    ):
        with pytest.raises(NonExistentWorkflowError):
            call()
    assert env.sql("SELECT count(*) FROM {schema}.workflows")[0][0] == 0


# --- fork ---------------------------------------------------------------------


def test_fork_reruns_from_the_given_step_and_replays_the_steps_before(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A fork at step 2 copies the checkpoints of steps 0 and 1 (same
    inputs, same name), runs steps 2.. again and never steps 0 and 1;
    the source is untouched. Forking again to the same id runs nothing."""
    w = _start(env, workers, "w")
    assert ns.steps.start(4, workflow_id="src").result(timeout=30) == ["s0", "s1", "s2", "s3"]

    fork = ns.durable.fork("src", 2, new_id="src-fork")
    assert fork.result(timeout=30) == ["s0", "s1", "s2", "s3"], w.describe()
    assert env.ledger("src-fork") == ["s2", "s3"]
    assert env.ledger("src") == ["s0", "s1", "s2", "s3"]
    assert [c[0] for c in _checkpoint_names(ns, "src-fork")] == [0, 1, 2, 3]
    status = fork.status()
    assert (status.name, status.status, status.parent_id) == ("mgmt.steps", "SUCCESS", None)

    assert ns.durable.fork("src", 2, new_id="src-fork").workflow_id == "src-fork"
    assert env.ledger("src-fork") == ["s2", "s3"]
    with pytest.raises(InvalidArgumentError):
        ns.durable.fork("src", -1)
    with pytest.raises(InvalidArgumentError):
        ns.durable.fork("src", 1, new_id="src")


# --- durable sleep --------------------------------------------------------------


def test_sleep_resumes_with_time_left_after_kill(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A 3 s sleep whose worker is killed after 1 s ends at the checkpointed
    wake time (or at once if recovery came later), not 3 s after recovery."""
    fast = {"DBOS_TEST_WORKER_TIMEOUT": "1.0"}
    first = _start(env, workers, "first", extra_env=fast)
    handle = ns.sleeps.start(3.0, workflow_id="nap")
    wait_for(lambda: _has_checkpoint(env, "nap", "durable.sleep"), 20, first.describe)
    (started,) = _ledger_at(env, "nap", "run")
    [(_, _, wake)] = [c for c in _checkpoint_names(ns, "nap") if c[1] == "durable.sleep"]
    assert abs(wake - (started + 3.0)) < 0.5
    time.sleep(max(0.0, started + 1.0 - time.time()))
    first.kill()

    second = _start(env, workers, "second", extra_env=fast)
    assert handle.result(timeout=30) == "woke", second.describe()
    runs = _ledger_at(env, "nap", "run")
    (woke,) = _ledger_at(env, "nap", "woke")
    assert len(runs) == 2
    # a fresh sleep would end at runs[1] + 3 (> both bounds below by >= 2 s)
    assert wake - 0.05 <= woke <= max(wake, runs[1]) + 1.0, (started, wake, runs, woke)
    assert woke < runs[1] + 3.0 - 1.0


# --- timeouts -----------------------------------------------------------------


def test_timeout_cancels_workflow_and_its_child(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A parent started with timeout=3 starts a child (which inherits the
    deadline), and both wait 60 s: at the deadline both end CANCELLED, both
    runs stop, neither goes past its wait."""
    w = _start(env, workers, "w")
    handle = ns.parent.start(60.0, workflow_id="par", timeout=3.0)
    wait_for(lambda: "started child" in env.ledger("par"), 20, w.describe)
    child = ns.durable.retrieve("par-0")
    parent_status = handle.status()
    assert parent_status.deadline is not None
    deadline = parent_status.deadline
    assert timedelta(seconds=2.5) < deadline - parent_status.created_at < timedelta(seconds=3.5)
    assert child.status().deadline == deadline
    assert child.status().parent_id == "par"

    wait_for(lambda: _stopped(w, "par") and _stopped(w, "par-0"), 20, w.describe)
    for wid in ("par", "par-0"):
        status = ns.durable.retrieve(wid).status()
        assert status.status == "CANCELLED"
        assert status.updated_at >= deadline - timedelta(seconds=0.1)  # not early
        _raises_cancelled(ns, wid)
    assert "after" not in env.ledger("par") and "after" not in env.ledger("par-0")

    # resumed, the deadline is gone: the parent waits again (no new timeout)
    ns.durable.resume("par")
    wait_for(lambda: handle.status().status == "PENDING", 20, w.describe)
    assert handle.status().deadline is None


def test_sweep_cancels_enqueued_workflow_past_its_deadline(env: Env, ns: SimpleNamespace) -> None:
    """No worker: the recovery sweep cancels a queued workflow whose
    deadline passed, and leaves one whose deadline has not."""
    ns.steps.start(1, workflow_id="late", timeout=0.2)
    ns.steps.start(1, workflow_id="early", timeout=60)
    ns.steps.start(1, workflow_id="untimed")
    time.sleep(0.4)
    swept = ns.durable.sweep()
    assert [(r.id, r.status) for r in swept] == [("late", "CANCELLED")]
    statuses = {r.workflow_id: r.status for r in ns.durable.list_workflows()}
    assert statuses == {"late": "CANCELLED", "early": "ENQUEUED", "untimed": "ENQUEUED"}
    _raises_cancelled(ns, "late")


def test_decorator_timeout_is_the_default_and_start_overrides_it(
    env: Env, ns: SimpleNamespace
) -> None:
    @ns.durable.workflow(name="mgmt.timed", timeout=100)
    def timed() -> None:
        return None

    timed.start(workflow_id="a")
    timed.start(workflow_id="b", timeout=10)
    a, b = (ns.durable.retrieve(x).status() for x in ("a", "b"))
    assert a.deadline is not None and b.deadline is not None
    assert timedelta(seconds=95) < a.deadline - a.created_at < timedelta(seconds=105)
    assert timedelta(seconds=5) < b.deadline - b.created_at < timedelta(seconds=15)
    with pytest.raises(InvalidArgumentError):
        timed.start(workflow_id="c", timeout=-1)
    assert {w.workflow_id for w in ns.durable.list_workflows()} == {"a", "b"}


# --- listing and schema ---------------------------------------------------------


def test_list_workflows_filters_by_creation_time(env: Env, ns: SimpleNamespace) -> None:
    for wid, day in (("jan", "2024-01-01"), ("jun", "2024-06-01"), ("nextjan", "2025-01-01")):
        ns.steps.start(1, workflow_id=wid)
        env.sql("UPDATE {schema}.workflows SET created_at = %s WHERE id = %s", day + "T00:00Z", wid)
    utc = timezone.utc

    def ids(**kw: Any) -> list[str]:
        return [w.workflow_id for w in ns.durable.list_workflows(**kw)]

    assert ids(created_after=datetime(2024, 3, 1, tzinfo=utc)) == ["jun", "nextjan"]
    assert ids(created_before=datetime(2024, 6, 1, tzinfo=utc)) == ["jan"]  # exclusive
    assert ids(created_after=datetime(2024, 6, 1), created_before=datetime(2025, 1, 1)) == ["jun"]
    assert ids(created_after=datetime(2024, 1, 1, tzinfo=utc), newest_first=True, limit=2) == [
        "nextjan",
        "jun",
    ]
    with pytest.raises(InvalidArgumentError):
        ns.durable.list_workflows(created_after="2024-01-01")


def test_v1_database_gains_the_deadline_column_on_upgrade(env: Env) -> None:
    """A database at schema version 1 (no deadline column) is upgraded to the
    latest version, and timeouts work on it."""
    d = Durable(Celery("upgrade"), env.database_url, schema=env.schema)
    try:
        d.migrate()
        env.sql("ALTER TABLE {schema}.workflows DROP COLUMN deadline")
        env.sql("DELETE FROM {schema}.schema_version WHERE version > 1")
    finally:
        d.close()
    d = Durable(Celery("upgrade"), env.database_url, schema=env.schema)
    try:
        d.migrate()
        versions = env.sql("SELECT version FROM {schema}.schema_version ORDER BY version")
        assert [v for (v,) in versions] == list(range(1, migrations.LATEST_VERSION + 1))
        cols = env.sql(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'workflows' AND column_name = 'deadline'",
            env.schema,
        )
        assert cols == [("timestamp with time zone",)]
        inputs = d.services.codec.dumps({"args": [], "kwargs": {}})
        assert d.services.store.now(workflows.insert_workflow, "x", "mgmt.steps", inputs, None, 5.0)
        assert d.retrieve("x").status().deadline is not None
    finally:
        d.close()
