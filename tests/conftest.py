"""Shared fixtures: a fresh Postgres schema per test, a private Celery queue
per test, and real Celery worker processes that can be SIGKILLed.

Services: Postgres at DBOS_TEST_DATABASE_URL, Redis at DBOS_TEST_REDIS_URL
and the Celery broker at DBOS_TEST_BROKER_URL (defaults: the loopback
servers, tests.support.SERVICE_DEFAULTS). For each that does not answer, the
run starts a private throwaway server from the installed binaries once, in
pytest's own process before xdist starts its workers (which inherit the
variables), and removes it at the end (tests/servers.py). Under CI (CI set)
nothing is started and a missing service fails the run; elsewhere, when no
private server could be started either, the tests that need it skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from tests import servers, support
from tests.proxy import DropReplyProxy
from tests.support import Env, WorkerProcess

_SERVERS = pytest.StashKey[servers.Servers]()


def pytest_configure(config: pytest.Config) -> None:
    """In the run's own process (not in an xdist worker): start private
    servers for the services that do not answer, before any test module
    reads the URLs (they are imported at collection, after this)."""
    if hasattr(config, "workerinput") or config.getoption("help", False):
        return
    if config.getoption("collectonly", False):
        return
    started = servers.bring_up()
    config.stash[_SERVERS] = started
    support.read_service_urls()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the private servers and remove their folders (also after an
    interrupted or failed run)."""
    started = config.stash.get(_SERVERS, None)
    if started is not None:
        started.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n 3`` (pyproject's addopts) with work stealing instead of xdist's
    ``load``: the acceptance tests, seconds each, come first in collection
    order and the unit tests last, and ``load`` hands a worker a chunk of a
    sixth of what is left at a time, so one worker was left with minutes of
    acceptance tests after the others had run out (about 100 s of the
    suite's wall time). With stealing an idle worker takes half of the
    busiest one's queue. Another ``--dist`` given explicitly is kept."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)


def pytest_report_header(config: pytest.Config) -> list[str]:
    started = config.stash.get(_SERVERS, None)
    return [f"services: {note}" for note in started.notes] if started is not None else []


def _require(name: str, problem: str | None) -> None:
    if problem is None:
        return
    message = f"{name} is not answering: {problem}"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    if os.environ.get(servers.PROBLEM):
        message += f" ({os.environ[servers.PROBLEM]})"
    pytest.skip(message)


@pytest.fixture(scope="session")
def services() -> None:
    _require("Postgres", servers.postgres_problem(support.DATABASE_URL))
    _require("Redis", servers.redis_problem(support.REDIS_URL))


@pytest.fixture
def env(services: None, request: pytest.FixtureRequest) -> Iterator[Env]:
    """A fresh schema (with a ledger table for side effects) and queue; a
    fresh SQLite file instead when parametrized indirectly with "sqlite"
    (see tests.support.BACKENDS)."""
    e = Env(schema=f"t_{uuid.uuid4().hex[:12]}", backend=getattr(request, "param", "postgres"))
    e.create()
    try:
        yield e
    finally:
        e.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``backends`` run on both (SQLite under -m slow);
    DBOS_TEST_BACKEND=sqlite runs
    every test that takes an `env` on SQLite only (a developer's check)."""
    if "env" not in metafunc.fixturenames:
        return
    only = os.environ.get("DBOS_TEST_BACKEND")
    if only:
        metafunc.parametrize("env", [only], indirect=True)
    elif metafunc.definition.get_closest_marker("backends"):
        # the SQLite variants run under -m slow (and DBOS_TEST_BACKEND=sqlite);
        # the default run keeps the suite short, tests/integration/test_sqlite.py
        # and the examples' embedded runs cover the file backend
        lite = pytest.param("sqlite", marks=pytest.mark.slow)
        metafunc.parametrize("env", ["postgres", lite], indirect=True)


AMQP_URL = os.environ.get("DBOS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def amqp_env(env: Env) -> Iterator[Env]:
    """``env`` with RabbitMQ as its Celery broker; its queues (and the
    ``_tasks`` one of the calls app) deleted afterwards."""
    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"RabbitMQ is not answering: {exc}")
    env.broker_url = AMQP_URL
    try:
        yield env
    finally:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            for q in (env.queue, f"{env.queue}_tasks"):
                try:
                    conn.default_channel.queue_delete(q)
                except Exception:
                    pass


@pytest.fixture
def workers(env: Env) -> Iterator[list[WorkerProcess]]:
    """Worker subprocesses started in a test; all killed at teardown."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for w in started:
            w.kill()


@pytest.fixture
def proxy(env: Env) -> Iterator[DropReplyProxy]:
    """A TCP proxy in front of the test's Postgres that can lose a committed
    statement's answer (``arm``); Postgres only."""
    if env.backend != "postgres":
        pytest.skip("a TCP proxy in front of Postgres")
    p = DropReplyProxy()
    try:
        yield p
    finally:
        p.close()
