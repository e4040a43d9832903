"""What every page of one dashboard shares: the Durable it reads through,
its guard, its mode, and rendering (Jinja2, autoescaped: nothing from the
database is ever printed unescaped)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..status import Status
from .security import CSRF_COOKIE, Guard, new_nonce

if TYPE_CHECKING:
    from ..durable import Durable

HERE = Path(__file__).resolve().parent


def when(value: datetime | None) -> str:
    """A time in UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1000:.2f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ago(value: datetime | None) -> str:
    if value is None:
        return ""
    delta = (datetime.now(timezone.utc) - value).total_seconds()
    if delta < 0:
        return "in " + duration(-delta)
    return duration(delta) + " ago"


def path_part(value: str) -> str:
    """A value as one URL path segment or query value: every reserved
    character escaped, '/' included."""
    return quote(value, safe="")


_STATUS_CLASS = {
    Status.ENQUEUED: "queued", Status.PENDING: "running", Status.WAITING: "parked",
    Status.SUCCESS: "ok", Status.ERROR: "bad", Status.CANCELLED: "off",
    Status.MAX_RECOVERY_ATTEMPTS_EXCEEDED: "bad",
}  # fmt: skip


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, duration=duration, ago=ago, q=path_part)
    env.globals["status_class"] = lambda s: _STATUS_CLASS.get(s, "other")
    return env


@dataclass
class Site:
    """One dashboard: the Durable it reads and acts through, its guard, its
    mode and its templates."""

    durable: Durable
    guard: Guard
    read_only: bool
    refresh: float  # seconds between live refreshes
    owned: bool  # made from a URL here: closed when the app shuts down
    publishes: bool  # resume, fork and woken workflows are published to a broker
    env: Environment
    title: str

    @property
    def store(self) -> Any:
        return self.durable.services.store

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        """A page or fragment; the CSRF cookie set when the browser has none."""
        nonce = request.cookies.get(CSRF_COOKIE)
        fresh = not nonce
        if fresh:
            nonce = new_nonce()
        assert nonce is not None
        base = request.scope.get("root_path", "").rstrip("/")
        html = self.env.get_template(name).render(
            base=base, csrf=self.guard.csrf_value(nonce), read_only=self.read_only,
            site=self, now=datetime.now(timezone.utc), **ctx,
        )  # fmt: skip
        response = HTMLResponse(html, status_code=status)
        if fresh:
            response.set_cookie(
                CSRF_COOKIE, nonce, path=base or "/", httponly=True, samesite="strict",
                secure=request.url.scheme == "https",
            )  # fmt: skip
        return response
