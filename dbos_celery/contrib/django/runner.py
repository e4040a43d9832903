"""Django's test runner, for a project with a Durable:
``TEST_RUNNER = "dbos_celery.contrib.django.runner.DiscoverRunner"``."""

from __future__ import annotations

from typing import Any

from django.test.runner import DiscoverRunner as _DjangoRunner  # type: ignore[import-untyped]

from .project import close_all


class DiscoverRunner(_DjangoRunner):  # type: ignore[misc]
    """Closes the project's Durables before the test databases are dropped:
    their pooled connections would keep ``DROP DATABASE`` from running."""

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        close_all()
        super().teardown_databases(old_config, **kwargs)
