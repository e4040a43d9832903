"""The app config of ``dbos_celery.contrib.django`` (in INSTALLED_APPS)."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.db.models.signals import post_migrate  # type: ignore[import-untyped]

from .project import migrate_schema


class DbosCeleryConfig(AppConfig):  # type: ignore[misc]
    """``manage.py migrate`` also creates or upgrades the dbos_celery schema
    of the project's Durable; ``manage.py dbos_celery`` manages workflows."""

    name = "dbos_celery.contrib.django"
    label = "dbos_celery"
    verbose_name = "dbos_celery durable workflows"

    def ready(self) -> None:
        post_migrate.connect(migrate_schema, sender=self, dispatch_uid="dbos_celery.migrate")
