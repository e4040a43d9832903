"""Checkout: a durable workflow that waits for a payment webhook.

The workflow waits (durably) for a ``payment_status`` message. When "paid"
arrives it charges the order once and fulfils it; when nothing arrives
before the timeout it cancels the order. The webhook handler is one call:
``durable.send(order_id, "paid", topic="payment_status", idempotency_key=...)``.

Run it as a program (an in-process worker, then two checkouts)::

    python -m examples.checkout            # or: python -m examples.checkout.app

With no settings it needs no servers: an SQLite file in the working
directory, in-process wakeups and an in-memory broker. Against Postgres,
Redis and a real worker (the URLs set), run the workflow on a worker and
drive it from elsewhere::

    celery -A examples.checkout.app worker -Q checkout

Settings come from the environment: DATABASE_URL (unset: SQLite), REDIS_URL
(unset or empty: no Redis, wakeups by polling), BROKER_URL (unset:
memory://localhost/, this process only), SCHEMA and QUEUE.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from celery import Celery

from dbos_celery import Durable

DATABASE_URL = os.environ.get("DATABASE_URL")  # None: Durable's embedded SQLite file
REDIS_URL = os.environ.get("REDIS_URL") or None  # None: in-process wakeups and polling
BROKER_URL = os.environ.get("BROKER_URL", "memory://localhost/")  # in this process only
SCHEMA = os.environ.get("SCHEMA", "checkout_example")
QUEUE = os.environ.get("QUEUE", "checkout")

app = Celery("checkout", broker=BROKER_URL)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True
app.conf.broker_transport_options = {"polling_interval": 0.05}  # how often memory:// polls

durable = Durable(app, DATABASE_URL, redis_url=REDIS_URL, schema=SCHEMA)


# Explicit names keep the workflow and step names stable whether this file
# runs as `python examples/checkout/app.py` (module __main__) or is imported.
@durable.step(name="checkout.charge", max_attempts=3, interval=0.5, backoff=2.0)
def charge(order_id: str) -> str:
    """Charge the card. Runs once per order: its result is checkpointed."""
    print(f"  [step] charging order {order_id}", flush=True)
    return f"ch_{order_id}"


@durable.workflow(name="checkout.checkout")
def checkout(order_id: str, timeout: float = 120) -> str:
    status = durable.recv("payment_status", timeout=timeout)  # None on timeout
    if status == "paid":
        charge(order_id)
        return "fulfilled"
    return "cancelled"


def payment_webhook(order_id: str, event_id: str, status: str) -> None:
    """What a web handler does when the payment provider calls back."""
    durable.send(order_id, status, topic="payment_status", idempotency_key=event_id)


def main() -> int:
    from celery.contrib.testing.worker import start_worker

    database = "DATABASE_URL" if DATABASE_URL else "embedded SQLite"
    print(
        f"checkout example: database {database}, schema {SCHEMA!r}, queue {QUEUE!r}, "
        f"redis {REDIS_URL or 'off'}, broker {BROKER_URL}"
    )
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=15,
    ):
        # 1. the webhook arrives (and the provider retries it)
        order = f"order-{uuid.uuid4().hex[:8]}"
        handle = checkout.start(order, workflow_id=order)
        print(f"{order}: checkout started, waiting for the payment webhook")
        time.sleep(0.5)  # the customer pays
        print(f"{order}: webhook payment_status=paid, delivered twice (one idempotency key)")
        payment_webhook(order, f"evt-{order}", "paid")
        payment_webhook(order, f"evt-{order}", "paid")  # a retried webhook: stored once
        paid = handle.result(timeout=30)
        print(f"{order}: result {paid!r}, status {handle.status().status}")

        # 2. the webhook never arrives: the durable timeout cancels the order
        order = f"order-{uuid.uuid4().hex[:8]}"
        timeout = 3.0
        handle = checkout.start(order, timeout, workflow_id=order)
        print(f"{order}: checkout started, no webhook will come (timeout {timeout:g} s)")
        started = time.monotonic()
        unpaid = handle.result(timeout=30)
        waited = time.monotonic() - started
        print(f"{order}: result {unpaid!r} after {waited:.1f} s, status {handle.status().status}")
    return 0 if (paid, unpaid) == ("fulfilled", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
