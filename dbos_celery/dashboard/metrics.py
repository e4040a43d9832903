"""Prometheus metrics, computed from the database at each scrape: right
whatever the number of worker processes, and the same from any process
that reads it (the dashboard, ``dbos-celery metrics``, or your own app).

    from prometheus_client import REGISTRY
    from dbos_celery.dashboard import DurableCollector

    REGISTRY.register(DurableCollector(durable))

Every metric is a gauge named ``dbos_celery_*`` (see ``FAMILIES``). One
scrape runs six statements; the count by status and name reads the whole
workflows table (0.2-0.3 s on 10^6 rows, see docs/dashboard.md), the
others are index lookups.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import DatabaseUnavailableError
from ..status import Status
from ..store import metrics

if TYPE_CHECKING:
    from ..durable import Durable

STEPS_WINDOW = 60.0  # seconds: steps per second is averaged over this

FAMILIES: dict[str, tuple[str, list[str]]] = {
    "dbos_celery_workflows": (
        "Workflows stored, by status and name (finished ones until garbage-collected).",
        ["status", "name"],
    ),
    "dbos_celery_workflow_recovery_attempts": (
        "Recovery attempts of the stored workflows, added up by status (a recovery: a "
        "worker took over a workflow whose worker had died).",
        ["status"],
    ),
    "dbos_celery_oldest_workflow_age_seconds": (
        "Seconds since the longest-standing workflow of the status entered it: ENQUEUED "
        "(queued, not running), PENDING (running), WAITING (parked); 0 when none.",
        ["status"],
    ),
    "dbos_celery_parked_workflows": (
        "Workflows parked in a long wait (status WAITING): no worker slot held.",
        [],
    ),
    "dbos_celery_messages_waiting": (
        "Messages stored and not yet consumed, by whether their destination is live (to "
        "be received) or finished (never received; kept until it is collected).",
        ["destination"],
    ),
    "dbos_celery_oldest_message_age_seconds": (
        "Seconds since the oldest message waiting for a live workflow was sent; 0 when none.",
        [],
    ),
    "dbos_celery_steps_per_second": (
        f"Checkpoints (steps, sends, recvs, calls, ...) committed per second over the "
        f"last {STEPS_WINDOW:.0f} s, by every worker.",
        [],
    ),
    "dbos_celery_live_workers": (
        "Worker processes heartbeating within worker_timeout.",
        [],
    ),
    "dbos_celery_database_up": (
        "1 when this scrape could read the database, else 0 (and nothing else is reported).",
        [],
    ),
    "dbos_celery_scrape_duration_seconds": (
        "Seconds this scrape spent reading the database.",
        [],
    ),
}


def _family(name: str) -> GaugeMetricFamily:
    doc, labels = FAMILIES[name]
    return GaugeMetricFamily(name, doc, labels=labels or None)


class DurableCollector(Collector):
    """A prometheus_client collector of one Durable's database."""

    def __init__(self, durable: Durable) -> None:
        self.durable = durable

    def describe(self) -> Iterable[Metric]:
        # the names only: registering must not read the database
        return [_family(name) for name in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        try:
            families = list(self._read())
        except DatabaseUnavailableError:
            up = _family("dbos_celery_database_up")
            up.add_metric([], 0.0)
            return [up]
        up = _family("dbos_celery_database_up")
        up.add_metric([], 1.0)
        took = _family("dbos_celery_scrape_duration_seconds")
        took.add_metric([], time.perf_counter() - started)
        return [*families, up, took]

    def _read(self) -> Iterator[Metric]:
        sv = self.durable.services
        store = sv.store
        workflows = _family("dbos_celery_workflows")
        recoveries = _family("dbos_celery_workflow_recovery_attempts")
        by_status: dict[str, int] = {}
        parked = 0
        for row in store.now(metrics.by_status_and_name):
            workflows.add_metric([row.status, row.name], row.count)
            by_status[row.status] = by_status.get(row.status, 0) + row.recovery_attempts
            if row.status == Status.WAITING:
                parked += row.count
        for status, attempts in sorted(by_status.items()):
            recoveries.add_metric([status], attempts)
        yield workflows
        yield recoveries
        oldest = _family("dbos_celery_oldest_workflow_age_seconds")
        for status, age in store.now(metrics.oldest_ages).items():
            oldest.add_metric([status], age or 0.0)
        yield oldest
        waiting = _family("dbos_celery_parked_workflows")
        waiting.add_metric([], parked)
        yield waiting
        got = store.now(metrics.waiting_messages)
        messages = _family("dbos_celery_messages_waiting")
        messages.add_metric(["live"], got.live)
        messages.add_metric(["finished"], got.finished)
        yield messages
        oldest_message = _family("dbos_celery_oldest_message_age_seconds")
        oldest_message.add_metric([], got.oldest_live or 0.0)
        yield oldest_message
        steps = _family("dbos_celery_steps_per_second")
        steps.add_metric([], store.now(metrics.recent_checkpoints, STEPS_WINDOW) / STEPS_WINDOW)
        yield steps
        workers = _family("dbos_celery_live_workers")
        workers.add_metric([], store.now(metrics.live_workers, sv.settings.worker_timeout))
        yield workers


def exposition(durable: Durable) -> bytes:
    """The metrics of one Durable in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DurableCollector(durable))
    return generate_latest(registry)
