"""OpenTelemetry: spans for a workflow run, its steps, sends, recvs (with
the wait apart), calls, parks and wakes, each carrying the workflow id,
checked with the in-memory exporter on a worker inside this process. The
trace context crosses the database: the run continues the trace of the
start() that enqueued it, and the recv links to the send that stored its
message; under opentelemetry-instrumentation-celery the run is a child of
Celery's own task span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dbos_celery import Durable
from dbos_celery.testing import TEST_CELERY_CONFIG, start_durable_worker
from tests.support import Env, wait_for

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once: OpenTelemetry's is global)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    return _EXPORTER


@pytest.fixture
def shop(env: Env, exporter: InMemorySpanExporter) -> Iterator[Any]:
    exporter.clear()
    app = Celery("traced")
    app.conf.update(TEST_CELERY_CONFIG)
    durable = Durable(app, env.database_url, schema=env.schema, park_after=0.3)

    @app.task(name="traced.tax", shared=False)
    def tax(amount: int) -> int:
        return amount // 10

    @durable.step(name="traced.charge")
    def charge(order: str) -> str:
        return f"ch-{order}"

    @durable.workflow(name="traced.order")
    def order(order_id: str) -> list[Any]:
        paid = durable.recv("pay", timeout=60)  # parks after 0.3 s
        return [charge(order_id), durable.call(tax, 420), paid]

    class Shop:
        pass

    shop = Shop()
    shop.durable, shop.order = durable, order  # type: ignore[attr-defined]
    try:
        with start_durable_worker(durable):
            yield shop
    finally:
        durable.close()


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def _parent(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


def _id(s: ReadableSpan) -> int:
    assert s.context is not None
    return s.context.span_id


def test_a_workflow_run_continues_the_trace_of_its_start_and_links_recv_to_send(
    shop: Any, exporter: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /orders") as request:
        handle = shop.order.start("o-1", workflow_id="o-1")
    wait_for(lambda: handle.status().status == "WAITING", 30)  # parked in recv
    with tracer.start_as_current_span("POST /webhooks/payment"):
        shop.durable.send("o-1", "paid", "pay")
    assert handle.result(timeout=30) == ["ch-o-1", 42, "paid"]

    spans = list(exporter.get_finished_spans())
    start = _one(spans, "dbos_celery.start traced.order")
    assert _parent(start) == request.get_span_context().span_id
    runs = [s for s in spans if s.name == "dbos_celery.workflow traced.order"]
    assert len(runs) == 2  # parked, then woken and replayed
    for run in runs:  # no Celery span here: the start's is the parent
        assert _parent(run) == _id(start)
        assert run.context is not None
        assert run.context.trace_id == request.get_span_context().trace_id
        assert run.attributes is not None and run.attributes["dbos_celery.workflow_id"] == "o-1"
    assert sorted(str((r.attributes or {})["dbos_celery.outcome"]) for r in runs) == [
        "SUCCESS", "unfinished"]  # fmt: skip

    park = _one(spans, "dbos_celery.park")  # while the recv waited
    assert _parent(park) in {_id(s) for s in spans if s.name == "dbos_celery.recv.wait"}
    send = _one(spans, "dbos_celery.send")
    wakes = [s for s in spans if s.name == "dbos_celery.wake"]
    assert any(list((w.attributes or {}).get("dbos_celery.woken", ())) == ["o-1"] for w in wakes), [
        w.attributes for w in wakes
    ]
    recv = [s for s in spans if s.name == "dbos_celery.recv" and s.links]
    assert len(recv) == 1 and recv[0].links[0].context.span_id == _id(send)
    waits = [s for s in spans if s.name == "dbos_celery.recv.wait"]
    assert _id(recv[0]) in {_parent(w) for w in waits}
    step = _one(spans, "dbos_celery.step traced.charge")
    call = _one(spans, "dbos_celery.call traced.tax")
    for child in (step, call, recv[0]):
        assert (child.attributes or {})["dbos_celery.workflow_id"] == "o-1"
        assert _parent(child) in {_id(r) for r in runs}


def test_under_celery_instrumentation_a_run_is_a_child_of_celerys_span(
    shop: Any, exporter: InMemorySpanExporter
) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    try:
        with trace.get_tracer("tests").start_as_current_span("POST /orders"):
            handle = shop.order.start("o-2", workflow_id="o-2")
        shop.durable.send("o-2", "paid", "pay")
        assert handle.result(timeout=30) == ["ch-o-2", 42, "paid"]
    finally:
        instrumentor.uninstrument()
    spans = list(exporter.get_finished_spans())
    start = _one(spans, "dbos_celery.start traced.order")
    run = _one(spans, "dbos_celery.workflow traced.order")
    celery_runs = {_id(s): s for s in spans if s.name == "run/traced.order"}
    assert _parent(run) in celery_runs  # Celery's task span
    assert [link.context.span_id for link in run.links] == [_id(start)]
