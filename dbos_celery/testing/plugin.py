"""The pytest plugin: options and fixtures (see ``dbos_celery.testing``).

Fixtures you override, as with ``celery.contrib.pytest``'s
``celery_config``: ``durable_instance`` (your Durable), ``durable_options``,
``durable_celery_config``, ``durable_worker_parameters``. Fixtures you use:
``durable``, ``durable_worker``, ``durable_run``, ``durable_send``,
``durable_steps``, ``assert_steps``, ``durable_database``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..durable import Durable
from .binding import TEST_CELERY_CONFIG, bind
from .database import TestDatabase, is_postgres_url, postgres_database, sqlite_database
from .helpers import (
    BOOKKEEPING,
    TIMEOUT,
    assert_recorded_steps,
    recorded_steps,
    run_workflow,
    send_message,
)
from .worker import start_durable_worker

if TYPE_CHECKING:
    from ..workflow import StepInfo

ENV_DATABASE_URL = "DBOS_CELERY_TEST_DATABASE_URL"
_OPTION = "--dbos-database-url"
_INI = "dbos_database_url"
_URL = pytest.StashKey[str | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--dbos-database-url URL`` and the ``dbos_database_url`` ini
    setting: the Postgres database the tests' workflows run on (a fresh
    schema per test); without either, a SQLite file per test."""
    group = parser.getgroup("dbos_celery", "dbos_celery durable workflows")
    group.addoption(
        _OPTION, dest="dbos_database_url", default=None, metavar="URL",
        help=f"run the tests' workflows on this Postgres database, a fresh schema per test "
        f"(default: ${ENV_DATABASE_URL}, else the {_INI} ini setting, else a SQLite file "
        "per test in tmp_path)",
    )  # fmt: skip
    parser.addini(_INI, "Postgres URL for the tests' workflows (see " + _OPTION + ")")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``durable(**options)`` mark and read the database URL
    once.

    Raises:
        pytest.UsageError: the URL is not a Postgres one (the run stops).
    """
    config.addinivalue_line(
        "markers",
        "durable(**options): Durable options for this test (as durable_options returns)",
    )
    config.stash[_URL] = database_url(config)  # a bad URL stops the run here


def database_url(config: pytest.Config) -> str | None:
    """The Postgres URL the tests use: the option, else the environment
    variable, else the ini setting; None: a SQLite file per test."""
    url = config.getoption("dbos_database_url", default=None) or os.environ.get(ENV_DATABASE_URL)
    if not url:
        try:
            url = config.getini(_INI)
        except ValueError:  # the plugin came late (a test module's pytest_plugins)
            url = None
    if not url:
        return None
    if not is_postgres_url(str(url)):
        raise pytest.UsageError(
            f"{_OPTION} / ${ENV_DATABASE_URL} / {_INI} must be a postgresql:// URL "
            "(without one, each test gets a SQLite file in its tmp_path)"
        )
    return str(url)


# --- the database ------------------------------------------------------------


@pytest.fixture(scope="session")
def durable_database_url(pytestconfig: pytest.Config) -> str | None:
    """The Postgres database the tests use, or None for SQLite files."""
    return pytestconfig.stash.get(_URL, None)


@pytest.fixture
def durable_database(durable_database_url: str | None, tmp_path: Path) -> Iterator[TestDatabase]:
    """This test's own database: a SQLite file in ``tmp_path``, or a fresh
    schema in the Postgres database given (dropped after the test)."""
    if durable_database_url is None:
        yield sqlite_database(tmp_path)
        return
    with postgres_database(durable_database_url) as db:
        yield db


# --- what you override ---------------------------------------------------------


@pytest.fixture
def durable_options() -> dict[str, Any]:
    """Durable options for the tests (``poll_interval``, ``park_after``,
    ``redis_url``...; default: your Durable's own, in-process wakeups).
    ``@pytest.mark.durable(...)`` adds to them for one test."""
    return {}


@pytest.fixture
def durable_celery_config() -> dict[str, Any]:
    """Celery settings applied to the app for each test (default: the
    in-memory broker, see ``dbos_celery.testing.TEST_CELERY_CONFIG``)."""
    return copy.deepcopy(TEST_CELERY_CONFIG)


@pytest.fixture
def durable_worker_parameters() -> dict[str, Any]:
    """Arguments for the in-process worker: ``pool`` (``"threads"``),
    ``concurrency`` (4), ``queues`` (every queue the app's tasks are routed
    to), and any of Celery's ``WorkController``."""
    return {}


@pytest.fixture
def durable_instance(durable_database: TestDatabase) -> Iterator[Durable]:
    """The Durable your tests run: override it to return yours (the one your
    app module builds). The default is a new Durable on a new Celery app,
    for workflows defined in the tests themselves."""
    from celery import Celery

    app = Celery("dbos_celery_tests", set_as_current=False)
    made = durable_database.durable(app)
    try:
        yield made
    finally:
        made.close()


# --- what you use --------------------------------------------------------------


@pytest.fixture
def durable(
    request: pytest.FixtureRequest,
    durable_instance: Durable,
    durable_database: TestDatabase,
    durable_options: dict[str, Any],
    durable_celery_config: dict[str, Any],
) -> Iterator[Durable]:
    """``durable_instance``, with its workflows and steps, on this test's
    database and its app on ``durable_celery_config``, for the test."""
    if not isinstance(durable_instance, Durable):
        raise pytest.UsageError(
            f"the durable_instance fixture must return a dbos_celery.Durable, "
            f"not {type(durable_instance).__name__}"
        )
    options = dict(durable_options)
    for mark in reversed(list(request.node.iter_markers("durable"))):
        options.update(mark.kwargs)
    with bind(
        durable_instance, durable_database, celery_config=durable_celery_config, **options
    ) as bound:
        yield bound


@pytest.fixture
def durable_worker(durable: Durable, durable_worker_parameters: dict[str, Any]) -> Iterator[Any]:
    """A Celery worker running the test's workflows in this process (threads
    pool), started before the test and stopped after it."""
    with start_durable_worker(durable, **durable_worker_parameters) as worker:
        yield worker


@pytest.fixture
def durable_run(durable: Durable, durable_worker: Any) -> Callable[..., Any]:
    """``durable_run(workflow, *args, workflow_id=None, result_timeout=30,
    **kwargs)``: start it on the worker and return its result (or raise its
    error); not finished within ``result_timeout`` seconds: the test fails
    with its status and checkpoints."""

    def run(
        workflow: Any,
        *args: Any,
        workflow_id: str | None = None,
        result_timeout: float = TIMEOUT,
        **kwargs: Any,
    ) -> Any:
        __tracebackhide__ = True
        if getattr(workflow, "sv", None) is not durable.services:
            raise TypeError(
                f"durable_run: {workflow!r} is not a workflow of the Durable that "
                "durable_instance returns (override durable_instance to return yours)"
            )
        return run_workflow(
            workflow, *args, workflow_id=workflow_id, result_timeout=result_timeout, **kwargs
        )

    return run


@pytest.fixture
def durable_send(durable: Durable) -> Callable[..., None]:
    """``durable_send(handle_or_id, message, topic=None, *,
    idempotency_key=None)``: ``durable.send`` to a workflow."""

    def send(to: Any, message: Any, topic: str | None = None, **kwargs: Any) -> None:
        send_message(durable, to, message, topic, **kwargs)

    return send


@pytest.fixture
def durable_steps(durable: Durable) -> Callable[..., list[StepInfo]]:
    """``durable_steps(handle_or_id, ignore=BOOKKEEPING)``: the checkpoints
    the workflow recorded (``StepInfo``: seq, name, output, error)."""

    def steps(workflow: Any, ignore: Any = BOOKKEEPING) -> list[StepInfo]:
        return recorded_steps(durable, workflow, ignore=ignore)

    return steps


@pytest.fixture(name="assert_steps")
def assert_steps_fixture(durable: Durable) -> Callable[..., list[StepInfo]]:
    """``assert_steps(handle_or_id, [name | step | (name, output), ...],
    ignore=BOOKKEEPING)``: the workflow recorded exactly these checkpoints,
    in order; else the test fails showing both lists."""

    def check(workflow: Any, expected: Any, ignore: Any = BOOKKEEPING) -> list[StepInfo]:
        __tracebackhide__ = True
        return assert_recorded_steps(durable, workflow, expected, ignore=ignore)

    return check
