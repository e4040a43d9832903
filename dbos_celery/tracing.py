"""OpenTelemetry spans, when ``opentelemetry-api`` is installed (the ``otel``
extra) and the application has set a tracer provider; nothing at all
otherwise (a check of about a microsecond per span site).

A span per workflow run, step, send, recv (its wait a child span of its
own, so that waiting and working show apart), ``durable.call``, park and
wake, each carrying the workflow id. Spans are children of whatever span is
current: under ``opentelemetry-instrumentation-celery`` a run is a child of
Celery's own task span. The context crosses the database where Celery
cannot carry it: ``start()`` stores its traceparent with the row and the run
links to it (or is its child when no span is current), ``send()`` stores
its own with the message and the ``recv`` that consumes it links to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the extra is not installed
    trace = None  # type: ignore[assignment]

WORKFLOW_ID = "dbos_celery.workflow_id"
_propagator = TraceContextTextMapPropagator() if trace is not None else None


def _active() -> bool:
    """Whether a tracer provider is set (the API alone records nothing:
    then spans are skipped outright, which costs nothing on the hot path)."""
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def traceparent() -> str | None:
    """The W3C traceparent of the current span (None: no sampled span)."""
    if _propagator is None or not _active():
        return None
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def _context_of(parent: str | None) -> Any:
    """The OpenTelemetry context a stored traceparent names (None: none)."""
    if parent is None or _propagator is None:
        return None
    return _propagator.extract({"traceparent": parent})


def span(
    name: str, attributes: dict[str, Any], parent: str | None = None
) -> AbstractContextManager[Any]:
    """A span named ``name`` around the block (it yields None when nothing
    records). ``parent``: a stored traceparent; the span's parent when no
    span is current, else a link."""
    if trace is None or not _active():
        return _NOTHING
    return _span(name, attributes, parent)


_NOTHING: AbstractContextManager[Any] = nullcontext()


@contextmanager
def _span(name: str, attributes: dict[str, Any], parent: str | None) -> Iterator[Any]:
    assert trace is not None
    tracer = trace.get_tracer("dbos_celery")
    ctx, links = None, []
    stored = _context_of(parent)
    if stored is not None:
        if trace.get_current_span().get_span_context().is_valid:
            links.append(trace.Link(trace.get_current_span(stored).get_span_context()))
        else:
            ctx = stored
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(name, context=ctx, attributes=attrs, links=links) as s:
        yield s


def link(span_: Any, parent: str | None) -> None:
    """Link ``span_`` to the span a stored traceparent names."""
    stored = _context_of(parent)
    if span_ is None or stored is None or trace is None:
        return
    add = getattr(span_, "add_link", None)
    if add is not None:
        add(trace.get_current_span(stored).get_span_context())
