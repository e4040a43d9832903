"""Settings, and every check on Durable's options, made once at construction
before anything connects or is written."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from .errors import ConfigurationError, InvalidArgumentError
from .store.engine import check_database_url, is_engine
from .validation import check_number

# the embedded default: a SQLite file in the working directory
DEFAULT_DATABASE_URL = "sqlite:///dbos_celery.sqlite"


@dataclass(frozen=True)
class Settings:
    """The tunables of one Durable (see the README's configuration table)."""

    schema: str = "dbos_celery"
    poll_interval: float = 1.0
    heartbeat_interval: float = 0.5
    worker_timeout: float = 2.0
    sweep_interval: float = 0.5
    enqueued_timeout: float = 30.0
    max_recovery_attempts: int = 50
    max_message_bytes: int = 1 << 20
    database_retry_timeout: float = 10.0
    call_redispatch_after: float = 60.0
    # a wait longer than this parks the workflow (frees its worker slot)
    park_after: float | None = 5.0
    # finished workflows older than this are deleted by the workers (None: kept)
    retention: float | None = None

    def __post_init__(self) -> None:
        _check(self)


# options that are counts; the other numbers are seconds
_INTEGERS = {"max_recovery_attempts": 0, "max_message_bytes": 1}


def _check(s: Settings) -> None:
    if isinstance(s.schema, str) and len(s.schema.encode("utf-8", "replace")) > 63:
        raise ConfigurationError(f"schema name {s.schema!r} is longer than Postgres's 63 bytes")
    numbers = {
        "poll_interval": s.poll_interval,
        "heartbeat_interval": s.heartbeat_interval,
        "worker_timeout": s.worker_timeout,
        "sweep_interval": s.sweep_interval,
        "enqueued_timeout": s.enqueued_timeout,
        "call_redispatch_after": s.call_redispatch_after,
        "database_retry_timeout": s.database_retry_timeout,
        "max_recovery_attempts": s.max_recovery_attempts,
        "max_message_bytes": s.max_message_bytes,
    }
    for what, value in numbers.items():
        try:
            if what in _INTEGERS:
                check_number(value, what, minimum=_INTEGERS[what], integer=True)
            else:
                check_number(value, what, above=what != "database_retry_timeout")
        except InvalidArgumentError as exc:
            raise ConfigurationError(f"Durable({exc.message()})") from None
    if s.heartbeat_interval <= 0 or s.worker_timeout <= s.heartbeat_interval:
        raise ConfigurationError("worker_timeout must exceed heartbeat_interval (> 0)")
    if s.poll_interval <= 0 or s.sweep_interval <= 0:
        raise ConfigurationError("poll_interval and sweep_interval must be > 0")
    park_after = s.park_after
    if park_after is not None and (isinstance(park_after, bool) or not park_after >= 0):
        raise ConfigurationError("park_after must be >= 0 seconds, or None (never park)")
    if s.retention is not None and (isinstance(s.retention, bool) or not s.retention > 0):
        raise ConfigurationError("retention must be a timedelta or seconds > 0, or None")
    if not s.call_redispatch_after > 0:
        raise ConfigurationError("call_redispatch_after must be > 0 (seconds)")


def database_url(url: Any, engine: Any) -> str | Callable[[], str] | None:
    """The database URL to use: the one given (a function returning it is
    called at first use), else ``DBOS_CELERY_DATABASE_URL``, else the
    embedded SQLite file; None with a caller's ``engine``."""
    if callable(url):
        if engine is not None:
            raise ConfigurationError("pass exactly one of database_url or engine")
        return cast("Callable[[], str]", url)
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(f"database_url must be a str URL, got {type(url).__name__}")
    if url:
        check_database_url(url)
    if engine is not None and not is_engine(engine):
        raise ConfigurationError(f"engine must be a SQLAlchemy Engine, got {type(engine).__name__}")
    if engine is not None:
        return url
    return url or os.environ.get("DBOS_CELERY_DATABASE_URL") or DEFAULT_DATABASE_URL


def retention(value: Any) -> float | None:
    """``retention=``: a timedelta or seconds, as seconds (None: keep all)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is not None and not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"retention must be a timedelta or seconds > 0, or None, got {type(value).__name__}"
        )
    return value


def redis_url(url: Any, environ: bool = True) -> str | None:
    """The Redis URL for wakeups: the one given, else (``environ``)
    ``DBOS_CELERY_REDIS_URL``; None: in-process wakeups and polling."""
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(f"redis_url must be a str URL, got {type(url).__name__}")
    return url or (os.environ.get("DBOS_CELERY_REDIS_URL") if environ else None) or None
