"""Log records carry the workflow id: the library's own (the ``dbos_celery``
logger) and, through WorkflowIdFilter on a handler, the application's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from dbos_celery import Durable, WorkflowIdFilter


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(WorkflowIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[_Collect]:
    handler = _Collect()
    loggers = [logging.getLogger("dbos_celery"), logging.getLogger("shop")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)


def test_every_record_names_its_workflow(tmp_path: Path, collected: _Collect) -> None:
    app = Celery("logs", broker="memory://")
    app.conf.broker_transport_options = {"polling_interval": 0.05}
    durable = Durable(app, f"sqlite:///{tmp_path / 'logs.db'}")
    shop = logging.getLogger("shop")
    failures = iter([True, False])

    @durable.step(max_attempts=2, interval=0.01)
    def flaky() -> str:
        shop.info("in the step")
        if next(failures):
            raise RuntimeError("first attempt fails")
        return "ok"

    @durable.workflow()
    def order() -> str:
        shop.info("in the workflow")
        return flaky()

    try:
        shop.info("before any workflow")
        with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
            assert order.start(workflow_id="order-7").result(timeout=30) == "ok"
    finally:
        durable.close()

    mine = [(r.getMessage(), r.workflow_id) for r in collected.records if r.name == "shop"]
    assert mine == [
        ("before any workflow", "-"),
        ("in the workflow", "order-7"),
        ("in the step", "order-7"),
        ("in the step", "order-7"),
    ]
    library = [r for r in collected.records if r.name == "dbos_celery"]
    retry = [r for r in library if "retrying" in r.getMessage()]
    assert retry and all(r.workflow_id == "order-7" for r in retry)
    migrated = [r for r in library if "migrated" in r.getMessage()]
    assert migrated and all(r.workflow_id == "-" for r in migrated)
    assert all(hasattr(r, "workflow_id") for r in library)
