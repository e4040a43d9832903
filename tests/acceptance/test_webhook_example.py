"""The FastAPI example (examples/webhook): its handlers start a workflow and
deliver a retried webhook to it through the awaitable producer calls; a
real `celery worker` runs the workflow; the webhook counts once."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from tests.support import Env, WorkerProcess, start_worker, wait_for

MODULE = "examples.webhook.app"


def _settings(env: Env) -> dict[str, str]:
    return {"DATABASE_URL": env.database_url, "REDIS_URL": env.redis_url or "",
            "BROKER_URL": env.broker_url, "SCHEMA": env.schema, "QUEUE": env.queue}  # fmt: skip


@pytest.fixture
def example(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    for k, v in _settings(env).items():
        monkeypatch.setenv(k, v)
    sys.modules.pop(MODULE, None)
    module = importlib.import_module(MODULE)  # reads the settings at import
    try:
        yield module
    finally:
        module.durable.close()
        sys.modules.pop(MODULE, None)


def test_webhook_example_end_to_end(
    env: Env, workers: list[WorkerProcess], example: ModuleType
) -> None:
    w = start_worker(env, workers, MODULE, extra_env=_settings(env))
    with TestClient(example.api) as client:
        assert client.post("/orders/o-1").json() == {"order": "o-1"}
        wait_for(lambda: client.get("/orders/o-1").json()["status"] == "WAITING", 30, w.describe)
        paid = {"event_id": "evt-1", "order_id": "o-1", "amount": 42.5}
        for _ in range(3):  # the provider retries its webhook
            assert client.post("/webhooks/payment", json=paid).json() == {"ok": True}
        wait_for(lambda: client.get("/orders/o-1").json()["status"] == "SUCCESS", 30, w.describe)
        assert client.get("/orders/o-1").json()["result"] == "shipped o-1 (42.50 paid)"
        assert (
            client.post("/webhooks/payment", json={**paid, "order_id": "nope"}).status_code == 404
        )
        assert client.get("/orders/nope").status_code == 404
    assert env.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]
    assert env.sql("SELECT count(*) FROM {schema}.send_keys") == [(1,)]
