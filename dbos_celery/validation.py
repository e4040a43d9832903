"""Checks on public arguments, raised before anything is written."""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidArgumentError

MAX_ID_LENGTH = 255


def check_id(value: Any, what: str) -> str:
    """A workflow id, event key or topic: a non-empty str of at most
    MAX_ID_LENGTH characters with no NUL (Postgres text cannot hold one)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(
            f"{what} is {len(value)} characters; the limit is {MAX_ID_LENGTH}"
        )
    if "\x00" in value:
        raise InvalidArgumentError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{what} is not valid Unicode text ({exc.reason})") from exc
    return value


def check_topic(topic: Any) -> str:
    """The stored form of a topic: '' for the default topic (None)."""
    return "" if topic is None else check_id(topic, "topic")


def check_timeout(timeout: Any, *, allow_none: bool = False) -> None:
    if timeout is None and allow_none:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgumentError(f"timeout must be a number of seconds, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError(f"timeout must be >= 0 seconds, got {timeout!r}")


def check_number(
    value: Any, what: str, *, minimum: float = 0.0, above: bool = False, integer: bool = False
) -> None:
    """A numeric option: a finite number (an int when ``integer``; never a
    bool) of at least ``minimum`` (greater than it when ``above``)."""
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InvalidArgumentError(f"{what} must be {kind}, got {value!r}")
    if not math.isfinite(value) or value < minimum or (above and value == minimum):
        bound = f"> {minimum:g}" if above else f">= {minimum:g}"
        raise InvalidArgumentError(f"{what} must be {kind} {bound} (finite), got {value!r}")


def check_step_options(
    name: str | None, interval: float, backoff: float, retry_on: tuple[type[BaseException], ...]
) -> None:
    """The options of ``@durable.step()`` and ``@durable.transaction()``."""
    if name is not None:
        check_id(name, "step name")
    check_number(interval, "interval")
    check_number(backoff, "backoff", minimum=1.0)
    if not (
        isinstance(retry_on, tuple)
        and all(isinstance(c, type) and issubclass(c, BaseException) for c in retry_on)
    ):
        raise InvalidArgumentError(f"retry_on must be a tuple of exception types, got {retry_on!r}")


def check_flag(value: object, what: str) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be True or False, got {value!r}")


def decorated_name(decorator: str, f: Any, name: str | None) -> str:
    """The name of a step ``@durable.<decorator>()`` makes of ``f``."""
    if not callable(f):
        raise InvalidArgumentError(f"@durable.{decorator}() decorates a function, not {f!r}")
    return name or f"{f.__module__}.{f.__qualname__}"
