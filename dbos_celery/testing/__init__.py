"""A pytest plugin for testing your durable workflows.

Load it from your ``conftest.py`` (it is not loaded by itself)::

    pytest_plugins = ["dbos_celery.testing"]

    @pytest.fixture
    def durable_instance():
        from shop.workflows import durable   # your Durable, as your app builds it
        return durable

and write tests with the fixtures::

    from shop.workflows import checkout, charge

    def test_paid_order_is_charged_once(durable_worker, durable_send, assert_steps):
        handle = checkout.start("o-1", workflow_id="o-1")
        durable_send(handle, "paid", topic="payment_status")
        assert handle.result(timeout=10) == "fulfilled"
        assert_steps(handle, ["durable.recv", (charge, "ch_o-1")])

Each test gets a database of its own: a SQLite file in its ``tmp_path``,
or, with ``--dbos-database-url`` (``$DBOS_CELERY_TEST_DATABASE_URL``, the
``dbos_database_url`` ini setting) naming a Postgres database, a fresh
schema in it, dropped after the test. Your Durable (its workflows and
steps, wherever they were imported) is pointed at it for the test, its
Celery app at the in-memory broker, and ``durable_worker`` runs a Celery
worker in the test's process. ``docs/testing.md`` has the whole story.

Without pytest's fixtures: :func:`bind`, :func:`start_durable_worker`,
:func:`run_workflow`, :func:`recorded_steps`, :func:`assert_recorded_steps`,
:func:`sqlite_database`, :func:`postgres_database`.

PYTEST_DONT_REWRITE: the helpers raise their own AssertionErrors, so a
conftest may import from this module before pytest loads it as a plugin.
"""

from .binding import TEST_CELERY_CONFIG, app_queues, bind
from .database import TestDatabase, postgres_database, sqlite_database
from .helpers import (
    BOOKKEEPING,
    assert_recorded_steps,
    recorded_steps,
    run_workflow,
    send_message,
)
from .plugin import (
    assert_steps_fixture,
    durable,
    durable_celery_config,
    durable_database,
    durable_database_url,
    durable_instance,
    durable_options,
    durable_run,
    durable_send,
    durable_steps,
    durable_worker,
    durable_worker_parameters,
    pytest_addoption,
    pytest_configure,
)
from .worker import start_durable_worker

__all__ = [
    "BOOKKEEPING",
    "TEST_CELERY_CONFIG",
    "TestDatabase",
    "app_queues",
    "assert_recorded_steps",
    "assert_steps_fixture",
    "bind",
    "durable",
    "durable_celery_config",
    "durable_database",
    "durable_database_url",
    "durable_instance",
    "durable_options",
    "durable_run",
    "durable_send",
    "durable_steps",
    "durable_worker",
    "durable_worker_parameters",
    "postgres_database",
    "pytest_addoption",
    "pytest_configure",
    "recorded_steps",
    "run_workflow",
    "send_message",
    "sqlite_database",
    "start_durable_worker",
]
