"""Shared fixtures: a fresh Postgres schema per test, a private Celery queue
per test, and real Celery worker processes that can be SIGKILLed.

Services: Postgres at DBOS_TEST_DATABASE_URL and Redis at DBOS_TEST_REDIS_URL
(defaults: the loopback servers). A missing service fails under CI (CI set)
and skips elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from kombu import Connection

from tests.support import (
    DATABASE_URL,
    REDIS_URL,
    Env,
    WorkerProcess,
)


def _require(name: str, check: object) -> None:
    try:
        check()  # type: ignore[operator]
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            raise RuntimeError(f"{name} is not answering: {exc}") from exc
        pytest.skip(f"{name} is not answering: {exc}")


@pytest.fixture(scope="session")
def services() -> None:
    _require("Postgres", lambda: psycopg.connect(DATABASE_URL, connect_timeout=3).close())
    _require("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())


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
    """Tests marked ``backends`` run on both; DBOS_TEST_BACKEND=sqlite runs
    every test that takes an `env` on SQLite only (a developer's check)."""
    if "env" not in metafunc.fixturenames:
        return
    only = os.environ.get("DBOS_TEST_BACKEND")
    if only:
        metafunc.parametrize("env", [only], indirect=True)
    elif metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("env", ["postgres", "sqlite"], indirect=True)


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
