"""Tests of the checkout example's workflow, written as a user writes them
with ``dbos_celery.testing`` (see ``conftest.py`` and docs/testing.md).

Each test runs on a database of its own (a SQLite file in its tmp_path, or
a fresh Postgres schema with ``--dbos-database-url``); ``durable_worker``
runs the workflows on a Celery worker inside the test's process.
"""

import pytest

from dbos_celery import NonExistentWorkflowError
from examples.checkout.app import charge, checkout, payment_webhook


def test_paid_order_is_charged_once_and_fulfilled(durable_worker, assert_steps):
    handle = checkout.start("o-1", workflow_id="order-1")
    payment_webhook("order-1", "evt-1", "paid")
    payment_webhook("order-1", "evt-1", "paid")  # the provider retries: stored once
    assert handle.result(timeout=10) == "fulfilled"
    assert_steps(handle, [("durable.recv", "paid"), (charge, "ch_o-1")])


def test_order_without_webhook_is_cancelled_at_the_timeout(durable_run, assert_steps):
    assert durable_run(checkout, "o-2", 0.2, workflow_id="order-2") == "cancelled"
    assert_steps("order-2", [("durable.recv", None)])  # timed out: nothing charged


def test_failed_payment_is_not_charged(durable_worker, durable_send, durable_steps):
    handle = checkout.start("o-3", workflow_id="order-3")
    durable_send(handle, "failed", topic="payment_status")
    assert handle.result(timeout=10) == "cancelled"
    assert charge.name not in [step.name for step in durable_steps(handle)]


def test_webhook_for_an_unknown_order_is_refused(durable):
    with pytest.raises(NonExistentWorkflowError):
        payment_webhook("no-such-order", "evt-9", "paid")
