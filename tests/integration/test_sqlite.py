"""The embedded default: a SQLite file, no servers at all.

The guarantees themselves run on SQLite in test_core, test_recovery and
test_messaging (their `env` is parametrized over both backends); this file
covers what is SQLite's own: the default location, the URLs refused, and
the one-machine rule.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from dbos_celery import ConfigurationError, Durable
from dbos_celery.wakeup import LocalNotifier, RedisNotifier
from tests.support import REDIS_URL


def _app() -> Celery:
    app = Celery("embedded", broker="memory://")
    app.conf.broker_transport_options = {"polling_interval": 0.05}
    return app


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DBOS_CELERY_DATABASE_URL", raising=False)
    monkeypatch.delenv("DBOS_CELERY_REDIS_URL", raising=False)
    yield tmp_path


def test_default_is_a_sqlite_file_in_the_working_directory_and_runs_workflows(
    workdir: Path,
) -> None:
    app = _app()
    durable = Durable(app)
    assert isinstance(durable.services.notifier, LocalNotifier)  # no Redis either
    effects: list[str] = []

    @durable.step()
    def charge(order: str) -> str:
        effects.append(order)
        return f"ch_{order}"

    @durable.workflow()
    def checkout(order: str) -> list[object]:
        paid = durable.recv("payment", timeout=30)
        receipt = charge(order)
        durable.set_event("receipt", receipt)
        return [paid, receipt]

    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            handle = checkout.start("o1", workflow_id="order-1")
            for _ in range(2):  # a retried webhook: stored once
                durable.send("order-1", "paid", topic="payment", idempotency_key="evt-1")
            assert handle.result(timeout=30) == ["paid", "ch_o1"]
            assert durable.get_event("order-1", "receipt", timeout=5) == "ch_o1"
    finally:
        durable.close()
    assert effects == ["o1"]
    db_file = workdir / "dbos_celery.sqlite"
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = conn.execute("SELECT id, status FROM workflows").fetchall()
        assert rows == [("order-1", "SUCCESS")]
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM send_keys").fetchone() == (1,)


def test_environment_variables_name_the_database_and_redis(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = workdir / "elsewhere" / "state.db"
    target.parent.mkdir()
    monkeypatch.setenv("DBOS_CELERY_DATABASE_URL", f"sqlite:///{target}")
    monkeypatch.setenv("DBOS_CELERY_REDIS_URL", REDIS_URL)
    durable = Durable(_app())
    assert isinstance(durable.services.notifier, RedisNotifier)

    @durable.workflow()
    def noop() -> int:
        return 1

    try:
        noop.start(workflow_id="n1")
        assert durable.retrieve("n1").status().status == "ENQUEUED"
    finally:
        durable.close()
    assert target.exists()
    assert not (workdir / "dbos_celery.sqlite").exists()


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "mysql://u@h/db", "oracle://h/x"]
)
def test_urls_without_a_shared_file_or_of_other_databases_are_refused(
    workdir: Path, url: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"SQLite needs a file|postgresql:// or sqlite"):
        Durable(_app(), url)
    assert list(workdir.iterdir()) == []  # nothing created


def test_a_file_used_by_workers_of_two_hosts_is_refused(workdir: Path) -> None:
    durable = Durable(_app())
    try:
        durable.services.runtime().start()  # this host's worker: fine
        conn = sqlite3.connect(workdir / "dbos_celery.sqlite", isolation_level=None)
        conn.execute(
            "INSERT INTO workers (id, hostname, pid) VALUES ('other:1:x', 'other-machine', 1)"
        )
        conn.close()
        late = Durable(_app())
        try:
            with pytest.raises(ConfigurationError, match="other-machine") as info:
                late.services.runtime().start()
            assert socket.gethostname() in str(info.value)
        finally:
            late.close()
    finally:
        durable.close()
