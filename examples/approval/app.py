"""Approval: a workflow that waits days for a human decision.

An expense request asks an approver, then waits up to three days for a
``decision`` message. A wait that long does not hold a Celery worker slot:
after ``park_after`` seconds the workflow *parks* (status WAITING, nothing
in memory) and the decision, whenever it comes, publishes it again; it
replays its checkpoints and carries on. If the worker restarts meanwhile,
nothing is lost, and the three days are counted from the first wait.

Run it as a program (an in-process worker; one request, approved)::

    python -m examples.approval.app

The approver's side is one call, ``decide(request_id, "approve")``, also a
script: ``python examples/approval/approve.py <request_id> approve|reject``.

With no settings it needs no servers (an SQLite file in the working
directory, in-process wakeups, an in-memory broker). Settings come from the
environment: DATABASE_URL, REDIS_URL, BROKER_URL, SCHEMA and QUEUE; with
the URLs set, ``celery -A examples.approval.app worker -Q approval`` runs
the workflows on a real worker.
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
SCHEMA = os.environ.get("SCHEMA", "approval_example")
QUEUE = os.environ.get("QUEUE", "approval")

app = Celery("approval", broker=BROKER_URL)
app.conf.task_default_queue = QUEUE
app.conf.broker_connection_retry_on_startup = True
app.conf.broker_transport_options = {"polling_interval": 0.05}  # how often memory:// polls

# park_after: a wait longer than this frees its worker slot (default 5 s;
# 1 s here so that the demo shows it parked quickly)
durable = Durable(app, DATABASE_URL, redis_url=REDIS_URL, schema=SCHEMA, park_after=1.0)

DAY = 24 * 3600


@durable.step(name="approval.ask")
def ask_approver(request_id: str, what: str, amount: float) -> None:
    print(f"  [step] {request_id}: approver asked about {what!r} ({amount:.2f})", flush=True)


@durable.step(name="approval.pay")
def pay(request_id: str, amount: float) -> str:
    print(f"  [step] {request_id}: paying {amount:.2f}", flush=True)
    return f"pay-{request_id}"


@durable.workflow(name="approval.expense")
def expense(what: str, amount: float, days: float = 3) -> str:
    request_id = durable.workflow_id
    ask_approver(request_id, what, amount)
    decision = durable.recv("decision", timeout=days * DAY)  # None after `days`
    if decision == "approve":
        pay(request_id, amount)
        return "approved"
    return "rejected" if decision == "reject" else "expired"


def decide(request_id: str, decision: str) -> None:
    """The approver's button (and approve.py). The first decision counts: a
    double click or a retried request is stored once (one idempotency key)."""
    key = f"{request_id}/decision"
    durable.send(request_id, decision, topic="decision", idempotency_key=key)


def main() -> int:
    from celery.contrib.testing.worker import start_worker

    database = "DATABASE_URL" if DATABASE_URL else "embedded SQLite"
    print(f"approval example: database {database}, schema {SCHEMA!r}, queue {QUEUE!r}")
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=15,
    ):
        request_id = f"expense-{uuid.uuid4().hex[:8]}"
        handle = expense.start("new laptop", 1800.0, workflow_id=request_id)
        print(f"{request_id}: requested, waiting up to 3 days for a decision")
        deadline = time.monotonic() + 15
        while (status := handle.status().status) != "WAITING" and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"{request_id}: status {status} (parked: no worker slot held)")
        print(f"{request_id}: the approver approves (what approve.py does)")
        decide(request_id, "approve")
        result = handle.result(timeout=30)
        print(f"{request_id}: result {result!r}, status {handle.status().status}")
    return 0 if (status, result) == ("WAITING", "approved") else 1


if __name__ == "__main__":
    sys.exit(main())
