"""The database URL of a Django database, for the Durable's own connections.

Read when the Durable first connects, not when it is made: Django's test
runner renames ``NAME`` to the test database after the settings are loaded
(and its parallel workers to their clones), and the Durable must follow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]

from ...errors import ConfigurationError

_SUPPORTED = "django.db.backends.postgresql or django.db.backends.sqlite3"

# OPTIONS that Django's postgresql backend consumes itself (the rest are
# libpq connection parameters)
_DJANGO_OPTIONS = frozenset(
    {"assume_role", "isolation_level", "pool", "server_side_binding", "cursor_factory",
     "context", "prepare_threshold"}
)  # fmt: skip


def database_url(alias: str = "default") -> str:
    """The URL of ``settings.DATABASES[alias]`` as the connection of that
    alias sees it now: ``postgresql+psycopg://`` for Django's postgresql
    backend (NAME, USER, PASSWORD, HOST, PORT and the libpq OPTIONS),
    ``sqlite:///NAME`` for sqlite3. Any other backend, or an in-memory
    SQLite database, is a ``ConfigurationError``."""
    try:
        databases = settings.DATABASES
    except ImproperlyConfigured as exc:
        raise ConfigurationError(f"Django settings are not configured: {exc}") from exc
    if alias not in databases:
        raise ConfigurationError(
            f"settings.DATABASES has no {alias!r} database (it has {sorted(databases)})"
        )
    engine = databases[alias].get("ENGINE") or ""
    where = f"settings.DATABASES[{alias!r}]['ENGINE']"
    try:
        wrapper = connections[alias]
        vendor = wrapper.vendor
    except (ImproperlyConfigured, ImportError) as exc:
        raise ConfigurationError(
            f"{where} is {engine!r}, which Django cannot load ({exc}); dbos_celery "
            f"needs {_SUPPORTED}"
        ) from exc
    if vendor == "postgresql":
        return _postgres(wrapper.settings_dict)
    if vendor == "sqlite":
        return _sqlite(alias, wrapper.settings_dict)
    raise ConfigurationError(
        f"{where} is {engine!r} (a {vendor} database): dbos_celery keeps its checkpoints "
        f"in the same database as your models, and needs {_SUPPORTED}"
    )


def _postgres(db: dict[str, Any]) -> str:
    options = db.get("OPTIONS") or {}
    params = {
        k: str(v)
        for k, v in options.items()
        if k not in _DJANGO_OPTIONS and isinstance(v, (str, int, float)) and not isinstance(v, bool)
    }
    user, password = db.get("USER") or "", db.get("PASSWORD") or ""
    host, port = str(db.get("HOST") or ""), str(db.get("PORT") or "")
    name = db.get("NAME")
    if name is None and "service" not in options:
        name = "postgres"  # as Django: None connects to the maintenance database
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    if "/" in host or "," in host:  # a Unix socket directory, or several hosts
        params["host"], host = host, ""
    elif ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = (auth + "@" if auth else "") + host + (":" + port if port and host else "")
    if port and not host:
        params["port"] = port
    query = "?" + urlencode(params) if params else ""
    return f"postgresql+psycopg://{netloc}/{quote(str(name or ''), safe='')}{query}"


def _sqlite(alias: str, db: dict[str, Any]) -> str:
    name = str(db.get("NAME") or "")
    if not name or name == ":memory:" or "mode=memory" in name:
        raise ConfigurationError(
            f"settings.DATABASES[{alias!r}] is an in-memory SQLite database ({name!r}), which "
            "the worker processes cannot share. Use a file; under Django's test runner set "
            f"DATABASES[{alias!r}]['TEST'] = {{'NAME': 'test.sqlite3'}}"
        )
    return f"sqlite:///{name}"
