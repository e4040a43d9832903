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


@pytest.fixture
def workers(env: Env) -> Iterator[list[WorkerProcess]]:
    """Worker subprocesses started in a test; all killed at teardown."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for w in started:
            w.kill()
