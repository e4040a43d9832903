"""Test helpers: per-test schema and queue, worker subprocesses, ledgers."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from tests import forkserver

ROOT = Path(__file__).resolve().parent.parent

# The services the suite uses: the DBOS_TEST_* variables, else these. When
# one does not answer, tests/conftest.py starts a private server before any
# test module is imported, points its variable at it and calls
# read_service_urls (tests/servers.py).
SERVICE_DEFAULTS = {
    "DBOS_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "DBOS_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
    "DBOS_TEST_BROKER_URL": "redis://127.0.0.1:6379/1",
}


def _service_url(var: str) -> str:
    return os.environ.get(var, SERVICE_DEFAULTS[var])


DATABASE_URL = _service_url("DBOS_TEST_DATABASE_URL")
REDIS_URL = _service_url("DBOS_TEST_REDIS_URL")
BROKER_URL = _service_url("DBOS_TEST_BROKER_URL")


def read_service_urls() -> None:
    """Read DATABASE_URL, REDIS_URL and BROKER_URL from the environment again."""
    global DATABASE_URL, REDIS_URL, BROKER_URL
    DATABASE_URL = _service_url("DBOS_TEST_DATABASE_URL")
    REDIS_URL = _service_url("DBOS_TEST_REDIS_URL")
    BROKER_URL = _service_url("DBOS_TEST_BROKER_URL")


SQLITE_DIR = Path("/tmp/dbos_celery_tests")

# a test (or module: pytestmark = BACKENDS) whose guarantees hold on both
# backends runs on both: its `env` is parametrized (tests/conftest.py)
BACKENDS = pytest.mark.backends


def run_sql(url: str, schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run a test's query on either backend. Queries name tables as
    ``{schema}.table`` and take ``%s`` parameters; on SQLite (one file per
    test, no schemas) both are translated."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            cur = conn.execute(query.replace("{schema}.", "").replace("%s", "?"), params)
            return cur.fetchall() if cur.description else []
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as pg:
        cur = pg.execute(query.replace("{schema}", f'"{schema}"'), params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@dataclass
class Env:
    """Everything one test needs to be independent of the others: a fresh
    Postgres schema, or (backend "sqlite") a fresh SQLite file."""

    schema: str
    # the URLs as they are when the Env is made (read_service_urls may change them)
    database_url: str = field(default_factory=lambda: DATABASE_URL)
    redis_url: str | None = field(default_factory=lambda: REDIS_URL)
    broker_url: str = field(default_factory=lambda: BROKER_URL)
    extra: dict[str, str] = field(default_factory=dict)
    backend: str = "postgres"

    def __post_init__(self) -> None:
        if self.backend == "sqlite":
            SQLITE_DIR.mkdir(parents=True, exist_ok=True)
            self.database_url = f"sqlite:///{SQLITE_DIR / self.schema}.sqlite"
        _DATABASES[self.schema] = self.database_url

    @property
    def queue(self) -> str:
        return f"q_{self.schema}"

    def vars(self) -> dict[str, str]:
        """Environment variables read by the apps under tests/apps."""
        return {
            "DBOS_TEST_DATABASE_URL": self.database_url,
            "DBOS_TEST_SCHEMA": self.schema,
            "DBOS_TEST_REDIS_URL": self.redis_url or "",
            "DBOS_TEST_BROKER_URL": self.broker_url,
            "DBOS_TEST_QUEUE": self.queue,
            **self.extra,
        }

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return run_sql(self.database_url, self.schema, query, *params)

    def create(self) -> None:
        if self.backend == "sqlite":
            self.close()
            self.sql("PRAGMA journal_mode=WAL")
            self.sql(
                "CREATE TABLE ledger (id integer primary key autoincrement, "
                "workflow_id text, what text, at real default "
                "((julianday('now') - 2440587.5) * 86400.0))"
            )
            return
        self.sql('CREATE SCHEMA "{s}"'.replace("{s}", self.schema))
        self.sql(
            "CREATE TABLE {schema}.ledger (id bigserial primary key, "
            "workflow_id text, what text, at double precision default "
            "extract(epoch from clock_timestamp()))"
        )

    def close(self) -> None:
        if self.backend == "sqlite":
            path = self.database_url.split(":///", 1)[1]
            for suffix in ("", "-wal", "-shm"):
                Path(path + suffix).unlink(missing_ok=True)
            return
        self.sql(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def ledger(self, workflow_id: str | None = None) -> list[str]:
        if workflow_id is None:
            return [r[0] for r in self.sql("SELECT what FROM {schema}.ledger ORDER BY id")]
        rows = self.sql(
            "SELECT what FROM {schema}.ledger WHERE workflow_id = %s ORDER BY id", workflow_id
        )
        return [r[0] for r in rows]


# the database of each test's schema, in the test process
_DATABASES: dict[str, str] = {}


def _test_sql(schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    # in a worker or app process: the database of the test that started it
    url = _DATABASES.get(schema) or os.environ.get("DBOS_TEST_DATABASE_URL", DATABASE_URL)
    return run_sql(url, schema, query, *params)


def write_ledger(env_schema: str, workflow_id: str, what: str) -> None:
    """Record a side effect (called from steps inside workers)."""
    _test_sql(
        env_schema, "INSERT INTO {schema}.ledger (workflow_id, what) VALUES (%s, %s)",
        workflow_id, what,
    )  # fmt: skip


class WorkerProcess:
    """A real `celery worker` subprocess in its own process group."""

    def __init__(
        self,
        env: Env,
        app: str = "tests.apps.core",
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        queues: str | None = None,
        extra_env: dict[str, str] | None = None,
        name: str = "w",
    ) -> None:
        self.env = env
        self.log_path = Path(f"/tmp/dbos_celery_tests/{env.schema}-{name}-{time.time_ns()}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            "-A", app, "worker",
            "-P", pool, "-c", str(concurrency), "-l", "info",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
            "-Q", queues or env.queue, "-n", f"{name}-{time.time_ns()}@%h",
        ]  # fmt: skip
        full_env = {**os.environ, **env.vars(), **(extra_env or {})}
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "wb")
        # `python -m celery *cmd` in a session of its own, forked from a
        # process that has imported Celery and the package (tests/forkserver.py)
        self.proc = forkserver.start(cmd, full_env, self.log_path, self._log)

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        wait_for(lambda: b" ready." in self.log_path.read_bytes(), timeout, self.describe)
        return self

    def describe(self) -> str:
        return f"worker log {self.log_path}:\n" + self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL the whole process group, as a dying machine would."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def wait_for(
    cond: Callable[[], Any], timeout: float = 20.0, describe: Callable[[], str] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met within {timeout} s" + (f"\n{describe()}" if describe else "")
            )
        time.sleep(0.02)


# Durable options a test can set for its worker subprocesses (extra_env)
ENV_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DBOS_TEST_ENQUEUED_TIMEOUT": ("enqueued_timeout", float),
    "DBOS_TEST_MAX_RECOVERY_ATTEMPTS": ("max_recovery_attempts", int),
    "DBOS_TEST_WORKER_TIMEOUT": ("worker_timeout", float),
    "DBOS_TEST_POLL_INTERVAL": ("poll_interval", float),
    "DBOS_TEST_CALL_REDISPATCH_AFTER": ("call_redispatch_after", float),
    "DBOS_TEST_PARK_AFTER": ("park_after", lambda v: None if v == "none" else float(v)),
    "DBOS_TEST_SWEEP_INTERVAL": ("sweep_interval", float),
    "DBOS_TEST_RETENTION": ("retention", float),
}


def app_from_env(
    name: str,
    env: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    **durable_options: Any,
) -> SimpleNamespace:
    """A fresh Celery app + Durable bound to one test's schema and queue,
    from ``env`` (a worker subprocess: its environment). Durable options:
    ``defaults`` < the DBOS_TEST_* variables < ``durable_options``;
    ``DBOS_TEST_TASK_TIME_LIMIT``: the app's ``task_time_limit``."""
    from celery import Celery

    from dbos_celery import Durable

    e = dict(os.environ if env is None else env)
    schema = e.get("DBOS_TEST_SCHEMA", "dbos_celery_dev")
    queue = e.get("DBOS_TEST_QUEUE", "celery")
    options = dict(defaults or {})
    for var, (option, convert) in ENV_OPTIONS.items():
        if e.get(var):
            options[option] = convert(e[var])
    options.update(durable_options)
    app = Celery(name, broker=e.get("DBOS_TEST_BROKER_URL", BROKER_URL))
    app.conf.task_default_queue = queue
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    if e.get("DBOS_TEST_TASK_TIME_LIMIT"):  # the app's global hard time limit
        app.conf.task_time_limit = float(e["DBOS_TEST_TASK_TIME_LIMIT"])
    durable = Durable(
        app,
        e.get("DBOS_TEST_DATABASE_URL", DATABASE_URL),
        redis_url=e.get("DBOS_TEST_REDIS_URL", REDIS_URL) or None,
        schema=schema,
        **options,
    )
    return SimpleNamespace(app=app, durable=durable, schema=schema, queue=queue)


def open_gate(schema: str, workflow_id: str, what: str) -> None:
    """Let the gated step ``what`` of ``workflow_id`` go on (now and on replays)."""
    write_ledger(schema, workflow_id, f"open:{what}")


def wait_gate(schema: str, workflow_id: str, what: str, timeout: float = 60.0) -> None:
    """In a step: block until the test opens the gate ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger_count(schema, workflow_id, f"open:{what}"):
            return
        time.sleep(0.02)
    raise TimeoutError(f"gate {what!r} of {workflow_id!r} was never opened")


def ledger_count(schema: str, workflow_id: str, what: str) -> int:
    rows = _test_sql(
        schema, "SELECT count(*) FROM {schema}.ledger WHERE workflow_id = %s AND what = %s",
        workflow_id, what,
    )  # fmt: skip
    return int(rows[0][0])


def start_worker(
    env: Env, workers: list[WorkerProcess], app: str = "tests.apps.core", **kw: Any
) -> WorkerProcess:
    """Start a worker subprocess, registered for SIGKILL at teardown, ready."""
    w = WorkerProcess(env, app, **kw)
    workers.append(w)
    return w.wait_ready()


def app_fixture(build: Callable[[dict[str, str]], SimpleNamespace]) -> Any:
    """A test module's ``ns`` fixture: the test process's own app + Durable
    (from ``build`` of its tests/apps module) on the test's schema and queue.
    Use: ``ns = app_fixture(build)``."""

    @pytest.fixture
    def ns(env: Env) -> Iterator[SimpleNamespace]:
        built = build(env.vars())
        try:
            yield built
        finally:
            built.durable.close()

    return ns


def max_overlap(env: Env) -> int:
    """The most workflow runs in progress at one moment (ledger start/end)."""
    rows = env.sql(
        "SELECT what FROM {schema}.ledger WHERE what IN ('start', 'end') ORDER BY at, id"
    )
    running = peak = 0
    for (what,) in rows:
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    return peak


def run_together(n: int, target: Callable[..., None], *args: Any) -> list[Any]:
    """Run ``target(*args, barrier, out)`` in ``n`` spawned processes that
    start their work on one barrier; what each put on ``out`` (fewer when a
    process died before reporting)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results: list[Any] = []
    try:
        for _ in range(n):
            results.append(out.get(timeout=60))
    except queue.Empty:  # pragma: no cover - a child died before reporting
        pass
    for p in procs:
        p.join(timeout=30)
    return results
