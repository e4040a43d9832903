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
