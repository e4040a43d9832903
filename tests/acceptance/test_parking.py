"""Parking: a workflow that waits longer than ``park_after`` frees its Celery
worker slot (its row becomes WAITING) and is published again when what it
waits for arrives or its deadline passes; real `celery worker` processes.

Each run of a ``park.*`` workflow writes "start" and "end" to the ledger, so
a parked-then-woken workflow shows two runs and one that waited in-process
shows one.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from celery import Celery

from dbos_celery import ConfigurationError, Durable, WorkflowFailedError
from dbos_celery.keys import key
from tests.apps.park import build
from tests.support import Env, WorkerProcess, app_fixture, max_overlap, start_worker, wait_for

ns = app_fixture(build)

APP = "tests.apps.park"


def _start(
    env: Env,
    workers: list[WorkerProcess],
    name: str,
    park_after: str,
    extra: dict[str, str] | None = None,
    **kw: object,
) -> WorkerProcess:
    extra_env = {"DBOS_TEST_PARK_AFTER": park_after, **(extra or {})}
    return start_worker(env, workers, APP, name=name, extra_env=extra_env, **kw)


def _statuses(env: Env, prefix: str) -> dict[str, int]:
    rows = env.sql(
        "SELECT status, count(*) FROM {schema}.workflows WHERE id LIKE %s GROUP BY status",
        prefix + "%",
    )
    return {r[0]: int(r[1]) for r in rows}


def _row(env: Env, workflow_id: str) -> tuple[str, str | None, str | None]:
    rows = env.sql(
        "SELECT status, executor_id, waiting_for FROM {schema}.workflows WHERE id = %s",
        workflow_id,
    )
    return rows[0]  # type: ignore[return-value]


def _runs(env: Env, workflow_id: str) -> int:
    return env.ledger(workflow_id).count("start")


def _many_parked(env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, n: int) -> None:
    w = _start(env, workers, "w", "0")
    handles = [ns.waits.start("go", 600.0, workflow_id=f"many-{i}") for i in range(n)]
    wait_for(lambda: _statuses(env, "many-").get("WAITING") == n, 60 + n / 20, w.describe)
    # all of them wait at once on a worker with two slots, none holding one
    held = "SELECT count(*) FROM {schema}.workflows WHERE executor_id IS NOT NULL"
    assert env.sql(held) == [(0,)]
    for i in range(n):
        ns.durable.send(f"many-{i}", i, "go")
    wait_for(lambda: _statuses(env, "many-") == {"SUCCESS": n}, 60 + n / 20, w.describe)
    assert [h.result(timeout=5) for h in handles] == list(range(n))
    assert max_overlap(env) <= 2
    counts = env.sql(
        "SELECT what, count(*) FROM {schema}.ledger WHERE what IN ('start', 'end') GROUP BY what"
    )
    assert dict(counts) == {"start": 2 * n, "end": 2 * n}  # parked once, woken once
    assert env.sql("SELECT max(recovery_attempts) FROM {schema}.workflows") == [(0,)]


def test_two_slots_hold_hundreds_of_parked_workflows(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """100 workflows wait in recv (10 min) on a worker with concurrency 2:
    all are WAITING at once with no executor; sends complete every one, and
    never more than 2 runs overlap (2000 under -m slow)."""
    _many_parked(env, workers, ns, 100)


@pytest.mark.slow
def test_two_slots_hold_two_thousand_parked_workflows(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    _many_parked(env, workers, ns, 2000)


def _race(env: Env, workers: list[WorkerProcess], ns: SimpleNamespace, n: int) -> None:
    # no sweep within the test (its first pass is at start-up; a wait parks
    # only when it outlasts the sweep interval): only the park / send
    # handshake may wake them
    w = _start(env, workers, "w", "0.05", extra={"DBOS_TEST_SWEEP_INTERVAL": "120"})
    handles = [ns.quiet.start("go", 600.0, workflow_id=f"race-{i}") for i in range(n)]
    sent: set[int] = set()
    deadline = time.monotonic() + 60
    while len(sent) < n:
        assert time.monotonic() < deadline, w.describe()
        rows = env.sql(
            "SELECT w.id, w.status, EXISTS (SELECT 1 FROM {schema}.steps s WHERE "
            "s.workflow_id = w.id AND s.name = 'durable.deadline') "
            "FROM {schema}.workflows w WHERE w.id LIKE 'race-%%'"
        )
        for wid, status, waits in rows:
            i = int(wid.split("-")[1])
            # even: as soon as it waits (racing the park 0.05 s later);
            # odd: as soon as it is parked (racing the sweep and the fast path)
            ready = waits if i % 2 == 0 else status == "WAITING"
            if i not in sent and ready:
                ns.durable.send(wid, i, "go")
                sent.add(i)
    wait_for(lambda: _statuses(env, "race-") == {"SUCCESS": n}, 30, w.describe)
    assert [h.result(timeout=5) for h in handles] == list(range(n))
    assert env.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]


def test_send_racing_the_park_leaves_none_waiting(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """100 workflows park after 0.05 s; each gets its message just before or
    just after it parks: every one completes with its message."""
    _race(env, workers, ns, 100)


@pytest.mark.slow
def test_send_racing_the_park_leaves_none_waiting_500(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    _race(env, workers, ns, 500)


def test_parked_deadline_wakes_even_with_no_worker_running_at_it(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A parked recv (3 s) and a parked sleep (3 s) pass their deadlines
    while no worker runs; a worker started later wakes them: the recv
    returns None, the sleep ends."""
    w = _start(env, workers, "w1", "0")
    recv = ns.waits.start("never", 3.0, workflow_id="dl-recv")
    sleep = ns.sleeps.start(3.0, workflow_id="dl-sleep")
    wait_for(lambda: _statuses(env, "dl-") == {"WAITING": 2}, 20, w.describe)
    assert _row(env, "dl-recv")[2] == key("m", "dl-recv", "never")
    w.stop()
    past = "SELECT bool_and(wake_at < now() - interval '0.5 s') FROM {schema}.workflows"
    wait_for(lambda: env.sql(past)[0][0], 10)
    time.sleep(0.5)
    assert _statuses(env, "dl-") == {"WAITING": 2}  # nobody woke them
    w2 = _start(env, workers, "w2", "0")
    assert recv.result(timeout=20) is None
    assert sleep.result(timeout=20) == "woke"
    assert env.ledger("dl-recv") == ["start", "end", "start", "got None", "end"], w2.describe()
    assert env.ledger("dl-sleep") == ["start", "end", "start", "woke", "end"]


def test_cancel_of_a_parked_workflow_ends_it_at_once(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Parked in a 10 min recv: cancel makes it CANCELLED at once (nothing
    runs it); a later message is not consumed and it never runs again."""
    w = _start(env, workers, "w", "0")
    handle = ns.waits.start("t", 600.0, workflow_id="cx")
    wait_for(lambda: _row(env, "cx")[0] == "WAITING", 20, w.describe)
    assert ns.durable.cancel("cx") is True
    assert handle.status().status == "CANCELLED"
    with pytest.raises(WorkflowFailedError, match="CANCELLED"):
        handle.result(timeout=2)
    ns.durable.send("cx", "late", "t")
    assert ns.durable.cancel("cx") is False
    time.sleep(1.5)  # a few sweeps: none may wake it
    assert _row(env, "cx") == ("CANCELLED", None, None)
    assert env.ledger("cx") == ["start", "end"]
    assert env.sql("SELECT count(*) FROM {schema}.messages") == [(1,)]


def test_parked_workflow_past_its_timeout_is_cancelled(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """Started with timeout=2 s and parked in a 10 min recv: the sweep
    cancels it at its deadline; it never runs again."""
    w = _start(env, workers, "w", "0")
    handle = ns.waits.start("t", 600.0, workflow_id="to", timeout=2.0)
    wait_for(lambda: _row(env, "to")[0] == "WAITING", 20, w.describe)
    wait_for(lambda: _row(env, "to")[0] == "CANCELLED", 10, w.describe)
    with pytest.raises(WorkflowFailedError, match="CANCELLED"):
        handle.result(timeout=2)
    assert env.ledger("to") == ["start", "end"]


def test_short_waits_stay_in_process_long_ones_park(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """park_after = 1 s: a message arriving after 0.3 s is received by the
    same run (never WAITING, one run); one arriving after 2.5 s finds the
    workflow parked and a second run receives it."""
    w = _start(env, workers, "w", "1.0")
    short = ns.waits.start("t", 60.0, workflow_id="short")
    long_ = ns.waits.start("t", 60.0, workflow_id="long")
    seen: set[str] = set()
    started = time.monotonic()
    sent_short = False
    while time.monotonic() - started < 2.5 or "long" not in seen:
        for wid in ("short", "long"):
            if _row(env, wid)[0] == "WAITING":
                seen.add(wid)
        if not sent_short and time.monotonic() - started > 0.3:
            wait_for(lambda: "start" in env.ledger("short"), 20, w.describe)
            ns.durable.send("short", "s", "t")
            sent_short = True
        assert time.monotonic() - started < 20, w.describe()
        time.sleep(0.01)
    ns.durable.send("long", "l", "t")
    assert short.result(timeout=10) == "s"
    assert long_.result(timeout=10) == "l"
    assert seen == {"long"}
    assert _runs(env, "short") == 1
    assert _runs(env, "long") == 2


def test_parent_parks_on_child_event_and_result(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    """A parent parks in get_event on its child's event, then in
    handle.result() on the child; the child's set_event and finish wake it."""
    w = _start(env, workers, "w", "0.2")
    parent = ns.parent.start("t", workflow_id="par")
    wait_for(lambda: _row(env, "par")[2] == key("e", "par-0", "got"), 20, w.describe)
    wait_for(lambda: _row(env, "par-0")[0] == "WAITING", 20, w.describe)
    ns.durable.send("par-0", "m1", "t")
    wait_for(lambda: _row(env, "par")[2] == key("d", "par-0"), 20, w.describe)
    ns.durable.send("par-0", "m2", "t")
    assert parent.result(timeout=20) == ["m1", ["m1", "m2"]]
    assert _runs(env, "par") == 3


def test_park_after_must_be_none_or_non_negative() -> None:
    app = Celery("x")
    url = "postgresql://postgres@127.0.0.1:5432/test"
    for bad in (-1.0, True, float("nan")):
        with pytest.raises(ConfigurationError):
            Durable(app, url, park_after=bad)
    assert Durable(app, url, park_after=None).services.settings.park_after is None
