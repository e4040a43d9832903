"""The checkout example, embedded (a SQLite file, the in-memory broker, an
in-process worker), tested through the pytest plugin for users
(``dbos_celery.testing``): its module-level Durable, built for its own
SQLite file in the working directory, runs each test on a file of the
test's own instead.

(``test_examples.py`` runs the example as a program; this runs its
workflow as the application's own tests would.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dbos_celery import Durable
from examples.checkout.app import charge, checkout, payment_webhook
from examples.checkout.app import durable as example_durable

if TYPE_CHECKING:
    from dbos_celery.testing import TestDatabase

pytest_plugins = ["dbos_celery.testing"]
pytestmark = pytest.mark.embedded


@pytest.fixture
def durable_instance() -> Durable:
    # the Durable of the module imported above, whose workflows the tests
    # run: not whatever examples.checkout.app is now (test_messaging.py
    # imports the example afresh, a module of its own, in the same process)
    return example_durable


@pytest.fixture
def durable_database_url() -> None:
    return None  # embedded: a SQLite file per test, whatever the run's settings


def test_paid_order_is_charged_once_though_the_webhook_is_retried(
    durable: Durable,
    durable_worker: Any,
    durable_database: TestDatabase,
    assert_steps: Callable[..., Any],
) -> None:
    handle = checkout.start("o-42", workflow_id="order-42")
    for _ in range(3):  # the payment provider retries its webhook
        payment_webhook("order-42", "evt-42", "paid")
    assert handle.result(timeout=30) == "fulfilled"
    assert_steps(handle, [("durable.recv", "paid"), (charge, "ch_o-42")])
    assert durable_database.backend == "sqlite" and Path(durable_database.path).exists()
    assert [w.workflow_id for w in durable.list_workflows()] == ["order-42"]


def test_unpaid_order_is_cancelled_after_its_durable_timeout(
    durable_run: Callable[..., Any], durable_steps: Callable[..., Any]
) -> None:
    assert durable_run(checkout, "o-43", 0.5, workflow_id="order-43") == "cancelled"
    assert [s.name for s in durable_steps("order-43")] == ["durable.recv"]
    assert charge.name not in [s.name for s in durable_steps("order-43", ignore=())]
