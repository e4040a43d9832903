"""The Django example (examples/django), run as its users run it: ``manage.py
migrate``, ``manage.py runserver``, ``celery -A proj worker`` and ``manage.py
test``, each a subprocess, on a Postgres database of the test's own (Django
needs its tables: CREATE DATABASE per test, dropped afterwards).

An order and its workflow commit together (the workflow finds its row; a
rolled-back batch leaves nothing and publishes nothing), a retried webhook
reaches the workflow once, a transaction step's ORM writes happen once
across a worker kill, ``migrate`` creates our schema, workers find
``workflows.py`` by themselves, and the test runner uses (and drops) the
test database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis

from tests.servers import unused_port
from tests.support import ROOT, Env, WorkerProcess, run_sql, start_worker, wait_for

EXAMPLE = ROOT / "examples" / "django"
FULFIL = "shop.workflows.fulfil"


class Project:
    """The example project on a fresh database named after the test's schema."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.name = env.schema
        self.url = urlunsplit(urlsplit(env.database_url)._replace(path="/" + self.name))

    def vars(self) -> dict[str, str]:
        """The example's settings (proj/settings.py reads them)."""
        e = self.env
        return {
            "DATABASE_URL": self.url, "REDIS_URL": e.redis_url or "", "BROKER_URL": e.broker_url,
            "SCHEMA": e.schema, "QUEUE": e.queue, "PYTHONPATH": str(EXAMPLE),
            # no system checks in workers: they import the URLconf, and so the
            # views and shop.workflows, which only autodiscovery must import
            "CELERY_SKIP_CHECKS": "1",
        }  # fmt: skip

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, **self.vars()}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(EXAMPLE), str(ROOT), os.environ.get("PYTHONPATH", "")]
        )
        return env

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=self.process_env(),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def migrate(self) -> str:
        done = self.manage("migrate", "--noinput")
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return run_sql(self.url, self.env.schema, query, *params)

    def admin(self, query: str) -> list[tuple[Any, ...]]:
        return run_sql(self.env.database_url, self.env.schema, query)

    def waits_for_a_widget(self, statement: str) -> bool:
        """Whether a session of the project's database waits for a lock in
        ``statement`` (INSERT, UPDATE) on the widget table."""
        rows = run_sql(
            self.env.database_url, self.env.schema, "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND wait_event_type = 'Lock' AND query LIKE %s",
            self.name, f'{statement} %"shop_widget"%',
        )  # fmt: skip
        return bool(rows[0][0])

    def worker(self, workers: list[WorkerProcess], name: str = "w") -> WorkerProcess:
        return start_worker(self.env, workers, "proj", extra_env=self.vars(), name=name)


class Server:
    """``manage.py runserver`` in a process group of its own."""

    def __init__(self, project: Project) -> None:
        port = unused_port()
        self.log_path = Path(f"/tmp/dbos_celery_tests/{project.name}-runserver.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=EXAMPLE, env=project.process_env(), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        wait_for(self._answers, 30, self.describe)

    def _answers(self) -> bool:
        try:
            return self.http.get("/widgets/0/").status_code == 404
        except httpx.TransportError:
            return False

    def describe(self) -> str:
        return (
            f"runserver log {self.log_path}:\n" + self.log_path.read_text(errors="replace")[-3000:]
        )

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(path, content=json.dumps(body))

    def widget(self, widget_id: int) -> dict[str, Any]:
        got = self.http.get(f"/widgets/{widget_id}/")
        assert got.status_code == 200, got.text[:2000]
        return got.json()  # type: ignore[no-any-return]

    def order(self, name: str) -> int:
        got = self.post("/widgets/", {"name": name})
        assert got.status_code == 201, got.text[:2000]
        return int(got.json()["widget"])

    def pay(self, widget_id: int, event_id: str, amount: float = 42.5) -> httpx.Response:
        return self.post(
            "/webhooks/payment/", {"id": event_id, "widget": widget_id, "amount": amount}
        )

    def finished(self, widget_id: int, worker: WorkerProcess) -> dict[str, Any]:
        """The widget once its workflow has ended (whichever way)."""
        live = ("ENQUEUED", "PENDING", "WAITING")
        wait_for(
            lambda: self.widget(widget_id)["workflow"] not in live,
            60,
            lambda: self.describe() + "\n" + worker.describe(),
        )
        # read again: the view reads the widget before the workflow's status,
        # not in one snapshot, so the read that saw it ended may be older
        return self.widget(widget_id)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def project(env: Env) -> Iterator[Project]:
    p = Project(env)
    p.admin(f'CREATE DATABASE "{p.name}"')
    try:
        yield p
    finally:
        for name in (p.name, f"test_{p.name}"):  # and the test runner's, if left
            p.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        broker = redis.Redis.from_url(env.broker_url)
        broker.delete(env.queue)
        broker.close()


@pytest.fixture
def server(project: Project) -> Iterator[Server]:
    project.migrate()
    s = Server(project)
    try:
        yield s
    finally:
        s.stop()


def test_manage_py_migrate_creates_the_schema_with_djangos_tables(project: Project) -> None:
    out = project.migrate()
    assert "Applying shop.0001_initial... OK" in out
    assert f"dbos_celery: schema '{project.env.schema}' migrated to version" in out
    tables = {r[0] for r in project.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        project.env.schema,
    )}  # fmt: skip
    assert {"workflows", "steps", "messages", "send_keys", "schema_version"} <= tables
    assert project.sql("SELECT count(*) FROM shop_widget") == [(0,)]
    again = project.manage("dbos_celery", "migrate")
    assert again.returncode == 0, again.stderr
    assert f"schema '{project.env.schema}' is up to date" in again.stdout
    listed = project.manage("dbos_celery", "--json", "workflow", "list")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_workers_register_the_workflows_of_workflows_py(
    project: Project, workers: list[WorkerProcess]
) -> None:
    w = project.worker(workers)
    registered = wait_for(
        lambda: project.sql("SELECT DISTINCT name FROM {schema}.worker_workflows"), 30, w.describe
    )
    assert registered == [(FULFIL,)]


def test_order_and_its_workflow_commit_together_and_it_finds_the_row(
    project: Project, server: Server, workers: list[WorkerProcess]
) -> None:
    w = project.worker(workers)
    with psycopg.connect(project.url) as blocker:
        # an open transaction holding the name "b": the batch's insert of "b"
        # waits for it, with "a" and its workflow written in the view's transaction
        blocker.execute("INSERT INTO shop_widget (name, status, created) VALUES ('b', '', now())")
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(server.post, "/widgets/batch/", {"names": ["a", "b"]})
            wait_for(lambda: project.waits_for_a_widget("INSERT"), 30, server.describe)
            assert project.sql("SELECT count(*) FROM {schema}.workflows") == [(0,)]
            blocker.rollback()
            got = reply.result(timeout=60)
    assert got.status_code == 201, got.text[:2000]
    ids = got.json()["widgets"]
    for widget_id in ids:
        assert server.pay(widget_id, f"evt-{widget_id}").json() == {"ok": True}
    for widget_id, name in zip(ids, ["a", "b"], strict=True):
        done = server.finished(widget_id, w)
        assert (done["workflow"], done["error"]) == ("SUCCESS", None)
        assert done["result"] == f"{name}: shipped (42.50 paid)"


def _queued(project: Project) -> list[str]:
    """The ids of the workflows whose Celery messages wait in the queue."""
    broker = redis.Redis.from_url(project.env.broker_url)
    try:
        return sorted(
            json.loads(m)["headers"]["id"] for m in broker.lrange(project.env.queue, 0, -1)
        )
    finally:
        broker.close()


def test_rolled_back_batch_leaves_nothing_and_publishes_nothing(
    project: Project, server: Server
) -> None:
    # no worker: every message published stays in the queue
    first = server.order("taken")
    got = server.post("/widgets/batch/", {"names": ["x", "y", "taken"]})
    assert got.status_code == 409, got.text[:2000]
    last = server.order("z")  # published after the batch was rolled back
    expected = sorted([f"widget-{first}", f"widget-{last}"])
    wait_for(lambda: len(_queued(project)) >= 2, 30, server.describe)
    assert _queued(project) == expected
    assert project.sql("SELECT name FROM shop_widget ORDER BY id") == [("taken",), ("z",)]
    assert sorted(r[0] for r in project.sql("SELECT id FROM {schema}.workflows")) == expected


def test_retried_payment_webhook_reaches_the_workflow_once(
    project: Project, server: Server, workers: list[WorkerProcess]
) -> None:
    w = project.worker(workers)
    widget_id = server.order("nut")
    for _ in range(3):  # the provider retries its webhook
        assert server.pay(widget_id, "evt-1").json() == {"ok": True}
    done = server.finished(widget_id, w)
    assert (done["workflow"], done["result"]) == ("SUCCESS", "nut: shipped (42.50 paid)")
    assert project.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]  # none left over
    assert project.sql("SELECT count(*) FROM {schema}.send_keys") == [(1,)]
    assert server.pay(999_999, "evt-2").status_code == 404


def test_transaction_step_writes_through_the_orm_once_across_a_worker_kill(
    project: Project, server: Server, workers: list[WorkerProcess]
) -> None:
    w1 = project.worker(workers, "w1")
    widget_id = server.order("bolt")
    with psycopg.connect(project.url) as blocker:
        # the ship step inserts its Shipment, then waits for this lock to
        # update the widget: killed there, before its commit
        blocker.execute("SELECT 1 FROM shop_widget WHERE id = %s FOR NO KEY UPDATE", (widget_id,))
        assert server.pay(widget_id, "evt-1").json() == {"ok": True}
        wait_for(lambda: project.waits_for_a_widget("UPDATE"), 60, w1.describe)
        w1.kill()
        blocker.rollback()
    w2 = project.worker(workers, "w2")
    done = server.finished(widget_id, w2)
    assert (done["workflow"], done["status"], done["shipments"]) == ("SUCCESS", "shipped", 1)
    steps = project.sql(
        "SELECT name FROM {schema}.steps WHERE workflow_id = %s ORDER BY seq", f"widget-{widget_id}"
    )
    assert [r[0] for r in steps].count("shop.workflows.ship") == 1


def test_manage_py_test_runs_on_the_test_database_and_drops_it(project: Project) -> None:
    done = project.manage("test", "shop", "--noinput")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ran 4 tests" in done.stderr and "\nOK" in done.stderr, done.stderr
    assert project.admin(
        f"SELECT count(*) FROM pg_database WHERE datname = 'test_{project.name}'"
    ) == [(0,)]
    # nothing of ours in the project's own database: all went to the test one
    assert project.sql(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s",
        project.env.schema,
    ) == [(0,)]
