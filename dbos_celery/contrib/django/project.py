"""The project's Durable: made once in ``proj/celery.py`` by
:func:`durable_for`, found again by the app config, the management command
and the test runner."""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from typing import IO, Any

from celery import Celery
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from ...durable import Durable
from ...errors import ConfigurationError
from .database import database_url
from .transactions import DjangoTransactions

# options that come from DATABASES, not from the caller or DBOS_CELERY
_OWN = ("app", "database_url", "engine", "transactions")

_lock = threading.Lock()
# (database alias, Durable) for each Durable durable_for made, oldest first
_made: list[tuple[str, Durable]] = []


def durable_for(app: Celery, alias: str = "default", **options: Any) -> Durable:
    """The Durable of a Django project, on Django's database ``alias``.

    Its URL is read from ``settings.DATABASES[alias]`` when it first
    connects (so under the test runner it is the test database); its
    transaction steps run in ``transaction.atomic(using=alias)``; the
    ``workflows`` modules of the ``INSTALLED_APPS`` are imported by workers,
    as Celery imports their ``tasks`` modules. Other ``Durable`` options come
    from ``options``, over those in the ``DBOS_CELERY`` setting (a dict,
    e.g. ``{"schema": "workflows", "redis_url": "redis://..."}``).
    """
    if not isinstance(alias, str):
        raise ConfigurationError(f"durable_for(alias=) must be a str, got {alias!r}")
    merged = {**_setting(), **options}
    given = [k for k in _OWN if k in merged]
    if given:
        raise ConfigurationError(
            f"durable_for() takes no {', '.join(given)}: the database is "
            f"settings.DATABASES[{alias!r}]"
        )
    unknown = sorted(set(merged) - set(inspect.signature(Durable).parameters))
    if unknown:
        raise ConfigurationError(
            f"durable_for() / settings.DBOS_CELERY: Durable has no option {', '.join(unknown)}"
        )
    durable = Durable(
        app, functools.partial(database_url, alias), transactions=DjangoTransactions(alias),
        **merged,
    )  # fmt: skip
    durable.autodiscover()  # workflows.py of each installed app, in workers
    with _lock:
        _made.append((alias, durable))
    return durable


def _setting() -> dict[str, Any]:
    try:
        value = getattr(settings, "DBOS_CELERY", {})
    except ImproperlyConfigured as exc:
        raise ConfigurationError(
            "durable_for() reads Django's settings: set DJANGO_SETTINGS_MODULE first "
            f"(Celery's layout: os.environ.setdefault(...) in proj/celery.py) ({exc})"
        ) from exc
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"settings.DBOS_CELERY must be a dict of Durable options, got {type(value).__name__}"
        )
    return dict(value)


def durables(alias: str | None = None) -> list[Durable]:
    """The Durables :func:`durable_for` made in this process (for ``alias``)."""
    with _lock:
        return [d for a, d in _made if alias is None or a == alias]


def get_durable(alias: str = "default") -> Durable:
    """The project's Durable for ``alias`` (the last one :func:`durable_for`
    made in this process), for modules that cannot import the project's
    ``celery.py``: ``get_durable().recv(...)`` in a shared workflow."""
    found = durables(alias)
    if not found:
        raise ConfigurationError(
            f"no Durable was made for database {alias!r} in this process: call "
            "dbos_celery.contrib.django.durable_for(app) in proj/celery.py and import that "
            "module from proj/__init__.py (Celery's Django layout)"
        )
    return found[-1]


def migrate_schema(
    sender: Any, using: str = "default", verbosity: int = 1, stdout: IO[str] | None = None,
    **kwargs: Any,
) -> None:  # fmt: skip
    """``post_migrate``: create or upgrade the schema of each Durable on the
    database ``manage.py migrate`` migrated (the test database too)."""
    for durable in durables(using):
        applied = durable.migrate()
        if applied and verbosity >= 1:
            schema = durable.services.settings.schema
            print(f"  dbos_celery: schema {schema!r} migrated to version {applied[-1]}",
                  file=stdout or sys.stdout)  # fmt: skip


def close_all() -> None:
    """Close every Durable :func:`durable_for` made (their connections would
    keep a test database from being dropped); they reconnect if used again."""
    for durable in durables():
        durable.close()
