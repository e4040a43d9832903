"""The web dashboard and Prometheus metrics (the ``dashboard`` extra:
``pip install "dbos-celery[dashboard]"``).

- ``create_app(durable_or_url, token=..., read_only=...)``: the ASGI app
  (Starlette) to serve or mount; ``create_wsgi_app(...)``: the same as WSGI.
- ``DurableCollector(durable)``: the ``dbos_celery_*`` metrics, to register
  with a prometheus_client registry of your own.
- ``dbos-celery dashboard`` and ``dbos-celery metrics`` serve and print them.

See docs/dashboard.md.
"""

from __future__ import annotations

from .app import create_app, create_wsgi_app
from .metrics import DurableCollector

__all__ = ["DurableCollector", "create_app", "create_wsgi_app"]
