"""Retention: garbage_collect deletes finished workflows older than a cutoff
with every row that belongs to them, in short batches, while workers run;
live and parked workflows are untouched and still complete. The automatic
collection (Durable(retention=...)) runs in a worker; the CLI's dry run
deletes nothing."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from dbos_celery import InvalidArgumentError, NonExistentWorkflowError
from tests.acceptance.test_cli import cli
from tests.apps.messaging import build
from tests.support import Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)

APP = "tests.apps.messaging"
TABLES = {
    "workflows": "id", "steps": "workflow_id", "events": "workflow_id",
    "messages": "destination_id", "send_keys": "destination_id",
}  # fmt: skip


def _rows(env: Env, prefix: str) -> dict[str, int]:
    return {
        table: env.sql(
            f"SELECT count(*) FROM {{schema}}.{table} WHERE {col} LIKE %s", prefix + "%"
        )[0][0]  # fmt: skip
        for table, col in TABLES.items()
    }


def _finish(env: Env, ns: SimpleNamespace, prefix: str, n: int) -> None:
    """``n`` finished workflows with steps, events, a leftover message and a
    send key each, last updated two days ago."""
    handles = [ns.events.start(workflow_id=f"{prefix}{i}") for i in range(n)]
    for i, h in enumerate(handles):
        ns.durable.send(h.workflow_id, i, "go")
    assert [h.result(timeout=60) for h in handles] == list(range(n))
    for h in handles:  # a late message, kept with its idempotency key
        ns.durable.send(h.workflow_id, "late", "go", idempotency_key="k")
    env.sql("UPDATE {schema}.workflows SET updated_at = now() - interval '2 days' "
            "WHERE id LIKE %s", prefix + "%")  # fmt: skip


def test_collects_old_finished_workflows_and_leaves_live_ones_running(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    w = start_worker(env, workers, APP, extra_env={"DBOS_TEST_PARK_AFTER": "0.5"})
    _finish(env, ns, "old-", 30)
    assert all(_rows(env, "old-").values()), _rows(env, "old-")
    recent = ns.echo.start("kept", workflow_id="recent")
    assert recent.result(timeout=30) == "kept"
    parked = [ns.collect.start(1, "t", 600.0, workflow_id=f"live-{i}") for i in range(5)]
    wait_for(lambda: env.sql("SELECT count(*) FROM {schema}.workflows WHERE status = "
                             "'WAITING'") == [(5,)], 30, w.describe)  # fmt: skip
    # parked for days: live, never collected
    env.sql("UPDATE {schema}.workflows SET updated_at = now() - interval '2 days' "
            "WHERE id LIKE 'live-%%'")  # fmt: skip

    assert cli(env, "workflow", "gc", "--older-than", "1d", "--dry-run",
               url=env.database_url).stdout.startswith("would delete 30 ")  # fmt: skip
    assert _rows(env, "old-")["workflows"] == 30  # the dry run deleted nothing

    assert ns.durable.garbage_collect(timedelta(days=1)) == 30
    assert _rows(env, "old-") == dict.fromkeys(TABLES, 0)
    assert ns.durable.garbage_collect(86400) == 0
    assert ns.durable.retrieve("recent").result(timeout=1) == "kept"
    for i, h in enumerate(parked):
        ns.durable.send(h.workflow_id, i, "t")
    assert [h.result(timeout=30) for h in parked] == [[i] for i in range(5)]
    with pytest.raises(NonExistentWorkflowError):
        ns.durable.resume("old-3")
    with pytest.raises(NonExistentWorkflowError):
        ns.durable.fork("old-3", 0)


def test_keep_latest_keeps_the_newest_finished_whatever_their_age(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    start_worker(env, workers, APP)
    _finish(env, ns, "k-", 6)
    env.sql("UPDATE {schema}.workflows SET updated_at = updated_at + "
            "(substr(id, 3)::int * interval '1 minute')")  # k-5 is the newest  # fmt: skip
    assert ns.durable.garbage_collect(3600, keep_latest=2) == 4
    kept = env.sql("SELECT id FROM {schema}.workflows ORDER BY id")
    assert kept == [("k-4",), ("k-5",)]


def test_the_workers_collect_by_themselves_with_retention_set(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    w = start_worker(env, workers, APP, extra_env={"DBOS_TEST_RETENTION": "3600"})
    _finish(env, ns, "auto-", 5)
    wait_for(lambda: _rows(env, "auto-")["workflows"] == 0, 30, w.describe)
    assert _rows(env, "auto-") == dict.fromkeys(TABLES, 0)
    assert "retention: deleted 5 finished workflows" in w.log_path.read_text()


@pytest.mark.parametrize(
    ("older_than", "keep"), [(-1, None), ("7d", None), (True, None), (60, -1), (60, 1.5)]
)
def test_bad_arguments_are_refused_before_anything_is_deleted(
    ns: SimpleNamespace, older_than: object, keep: object
) -> None:
    with pytest.raises(InvalidArgumentError):
        ns.durable.garbage_collect(older_than, keep)  # type: ignore[arg-type]


def test_cli_refuses_a_bad_duration(env: Env) -> None:
    got = cli(env, "workflow", "gc", "--older-than", "7 weeks", url=env.database_url)
    assert got.returncode == 2 and "a duration like 90s" in got.stderr, got.stderr
