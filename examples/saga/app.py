"""Saga: an order that undoes what it did when a later step fails for good.

The workflow reserves inventory, charges the payment, then ships. Each step
is durable (checkpointed). If shipping fails permanently, the steps already
done are compensated in reverse order (refund, then release the inventory),
each compensation a durable step too: a crash halfway through the rollback
resumes the rollback, it never forgets a refund or refunds twice.

Run it as a program (an in-process worker, one order that ships and one
that cannot)::

    python -m examples.saga.app

With no settings it needs no servers (an SQLite file in the working
directory, in-process wakeups, an in-memory broker). Settings come from the
environment: DATABASE_URL, REDIS_URL, BROKER_URL, SCHEMA and QUEUE; with
the URLs set, ``celery -A examples.saga.app worker -Q saga`` runs the
workflows on a real worker.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

from celery import Celery

from dbos_celery import Durable

DATABASE_URL = os.environ.get("DATABASE_URL")  # None: Durable's embedded SQLite file
REDIS_URL = os.environ.get("REDIS_URL") or None  # None: in-process wakeups and polling
BROKER_URL = os.environ.get("BROKER_URL", "memory://localhost/")  # in this process only
SCHEMA = os.environ.get("SCHEMA", "saga_example")
QUEUE = os.environ.get("QUEUE", "saga")

app = Celery("saga", broker=BROKER_URL)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True
app.conf.broker_transport_options = {"polling_interval": 0.05}  # how often memory:// polls

durable = Durable(app, DATABASE_URL, redis_url=REDIS_URL, schema=SCHEMA)


class Undeliverable(Exception):
    """Shipping failed for good: no retry will help."""


# Explicit names keep step and workflow names stable whether this file runs
# as a program (module __main__) or is imported by `celery -A`.
@durable.step(name="saga.reserve")
def reserve(order_id: str, items: int) -> str:
    print(f"  [step] {order_id}: reserve {items} item(s)", flush=True)
    return f"rsv-{order_id}"


@durable.step(name="saga.charge")
def charge(order_id: str, amount: float) -> str:
    print(f"  [step] {order_id}: charge {amount:.2f}", flush=True)
    return f"pay-{order_id}"


# transient carrier errors are retried; Undeliverable is not
@durable.step(name="saga.ship", max_attempts=3, interval=0.5, retry_on=(ConnectionError,))
def ship(order_id: str, address: str) -> str:
    print(f"  [step] {order_id}: ship to {address!r}", flush=True)
    if address == "nowhere":
        raise Undeliverable(f"no carrier delivers to {address!r}")
    return f"trk-{order_id}"


@durable.step(name="saga.refund")
def refund(order_id: str, payment: str) -> None:
    print(f"  [undo] {order_id}: refund {payment}", flush=True)


@durable.step(name="saga.release")
def release(order_id: str, reservation: str) -> None:
    print(f"  [undo] {order_id}: release {reservation}", flush=True)


@durable.workflow(name="saga.place_order")
def place_order(order_id: str, items: int, amount: float, address: str) -> dict[str, Any]:
    done: list[tuple[Any, str]] = []  # (compensation, what to compensate), in order
    try:
        done.append((release, reserve(order_id, items)))
        done.append((refund, charge(order_id, amount)))
        tracking = ship(order_id, address)
    except Exception as exc:
        for compensate, ref in reversed(done):
            compensate(order_id, ref)
        return {"status": "compensated", "reason": str(exc)}
    return {"status": "shipped", "tracking": tracking}


def main() -> int:
    from celery.contrib.testing.worker import start_worker

    database = "DATABASE_URL" if DATABASE_URL else "embedded SQLite"
    print(f"saga example: database {database}, schema {SCHEMA!r}, queue {QUEUE!r}")
    outcomes = []
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=15,
    ):
        for address in ("221B Baker Street", "nowhere"):
            order = f"order-{uuid.uuid4().hex[:8]}"
            print(f"{order}: placing an order to {address!r}", flush=True)
            result = place_order.start(order, 2, 30.0, address, workflow_id=order).result(30)
            steps = [s.name + (" (failed)" if s.error else "") for s in durable.list_steps(order)]
            print(f"{order}: result {result}")
            print(f"{order}: checkpoints {', '.join(steps)}")
            outcomes.append(result["status"])
    return 0 if outcomes == ["shipped", "compensated"] else 1


if __name__ == "__main__":
    sys.exit(main())
