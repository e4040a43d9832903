"""The list page's query string: filters and keyset cursors, read from and
written back to URLs.

Parameters: ``status``, ``name``, ``id`` (a prefix), ``from`` and ``to``
(ISO 8601 times; without an offset, UTC), ``older`` / ``newer`` (cursors:
the page after or before a row), ``live=0`` (no auto-refresh). A cursor is
the row's (created_at as stored, id), JSON in URL-safe base64.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from ..status import Status
from ..store.inspect import Cursor, PageQuery

PAGE_SIZE = 50
STATUSES = [s.value for s in Status]
MAX_TEXT = 255  # an id, name or prefix is at most this long (validation.MAX_ID_LENGTH)


class BadQuery(ValueError):
    """A query parameter that cannot be read (the page answers 400)."""


def encode_cursor(cursor: Cursor) -> str:
    when, wid = cursor
    if isinstance(when, datetime):
        raw: list[Any] = ["t", when.isoformat(), wid]
    else:
        raw = ["f", float(when), wid]
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        kind, when, wid = raw
        if not isinstance(wid, str):
            raise TypeError
        if kind == "t":
            return datetime.fromisoformat(when), wid
        if kind == "f" and isinstance(when, int | float):
            return float(when), wid
    except (ValueError, TypeError, binascii.Error):
        pass
    raise BadQuery("a page cursor that this dashboard did not make")


def parse_time(value: str, what: str) -> datetime:
    """An ISO 8601 date or time (a datetime-local field's value); without an
    offset, UTC."""
    text = value.strip()
    try:
        got = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise BadQuery(f"{what}: not an ISO 8601 date or time: {value!r}") from None
    return got if got.tzinfo is not None else got.replace(tzinfo=timezone.utc)


def _text(params: Any, key: str) -> str | None:
    value = params.get(key)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_TEXT or "\x00" in value:
        raise BadQuery(f"{key}: at most {MAX_TEXT} characters, no NUL")
    return str(value)


def page_query(params: Any) -> PageQuery:
    """The PageQuery of a request's query parameters (a Mapping[str, str])."""
    status = _text(params, "status")
    if status is not None and status not in STATUSES:
        raise BadQuery(f"status: one of {', '.join(STATUSES)}")
    since, until = _text(params, "from"), _text(params, "to")
    older, newer = _text(params, "older"), _text(params, "newer")
    return PageQuery(
        status=status,
        name=_text(params, "name"),
        id_prefix=_text(params, "id"),
        created_after=None if since is None else parse_time(since, "from"),
        created_before=None if until is None else parse_time(until, "to"),
        before=None if older is None else decode_cursor(older),
        after=None if newer is None else decode_cursor(newer),
        limit=PAGE_SIZE,
    )


def filters(q: PageQuery) -> dict[str, str]:
    """The filter parameters of ``q`` (no cursor), for links and forms."""
    out: dict[str, str] = {}
    for key, value in (("status", q.status), ("name", q.name), ("id", q.id_prefix)):
        if value:
            out[key] = value
    for key, when in (("from", q.created_after), ("to", q.created_before)):
        if when is not None:
            utc = when.astimezone(timezone.utc)
            out[key] = utc.strftime("%Y-%m-%dT%H:%M:%S" + (".%f" if utc.microsecond else ""))
    return out


def url(base: str, params: dict[str, str]) -> str:
    return f"{base}/?{urlencode(params)}" if params else f"{base}/"


def with_status(q: PageQuery, status: str | None) -> dict[str, str]:
    """The filters of ``q`` with another status (None: any)."""
    return filters(replace(q, status=status))
