"""The ASGI app (Starlette) and its WSGI twin: routes, the gate every
request passes (token, security headers), and the factories.

Routes: ``/`` the workflows, ``/workflows/<id>`` one workflow,
``POST /actions/{send,cancel,resume,fork}``, ``/metrics``, ``/login``,
``/static/...``. Page handlers are synchronous (the library is) and run in
Starlette's thread pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from celery import Celery
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..durable import Durable
from .actions import Actions, BadForm, read_form
from .metrics import exposition
from .pages import Pages
from .security import SESSION_COOKIE, Guard
from .site import HERE, Site, templates

if TYPE_CHECKING:
    from a2wsgi.wsgi_typing import WSGIApp

SECURITY_HEADERS = [
    # no inline script or style anywhere: injected markup could not run
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
     b"img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
     b"base-uri 'none'; object-src 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" would make POSTs send Origin: null
    (b"cache-control", b"no-store"),
]  # fmt: skip


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class Gate:
    """ASGI middleware: security headers on every response; with a token,
    every request but the static files and the login page must carry it."""

    def __init__(self, app: ASGIApp, site: Site) -> None:
        self.app = app
        self.site = site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        response = await self._check(Request(scope, receive))
        if response is not None:
            await response(scope, receive, with_headers)
        else:
            await self.app(scope, receive, with_headers)

    async def _check(self, request: Request) -> Response | None:
        """None: let the request through; else the answer to it."""
        guard, path = self.site.guard, _route_path(request.scope)
        if guard.token is None or path.startswith("/static/"):
            return None
        if path == "/login":
            return await self._login(request)
        given = request.query_params.get("token")
        if given is not None:
            if not guard.token_matches(given):
                return self._login_page(request, "That token is wrong.", 401)
            rest = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != "token"])
            return self._logged_in(request, request.url.path + (f"?{rest}" if rest else ""))
        if guard.authenticated(request):
            return None
        if path == "/metrics" or "text/html" not in request.headers.get("accept", "text/html"):
            return PlainTextResponse("a token is needed (Authorization: Bearer <token>)\n", 401,
                                     headers={"www-authenticate": "Bearer"})  # fmt: skip
        return self._login_page(request, None, 401)

    def _login_page(self, request: Request, error: str | None, status: int) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        path = _route_path(request.scope)
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if path == "/login" or not back.startswith(base + "/"):
            back = base + "/"
        return self.site.render(request, "login.html", status=status, error=error, next=back)

    def _logged_in(self, request: Request, to: str) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        if not to.startswith(base + "/") or to.startswith("//"):
            to = base + "/"
        response = RedirectResponse(to, 303)
        response.set_cookie(
            SESSION_COOKIE, self.site.guard.session_value(), path=base or "/", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    async def _login(self, request: Request) -> Response:
        if request.method != "POST":
            return self._login_page(request, None, 200)
        try:
            form = await read_form(request)
        except BadForm as exc:
            return PlainTextResponse(str(exc), exc.status)
        if not self.site.guard.token_matches(form.get("token")):
            return self._login_page(request, "That token is wrong.", 401)
        return self._logged_in(request, form.get("next", ""))


def create_app(
    source: Durable | str,
    *,
    token: str | None,
    read_only: bool = False,
    schema: str = "dbos_celery",
    broker_url: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    refresh: float = 5.0,
    database_retry_timeout: float = 3.0,
) -> Starlette:
    """The dashboard as an ASGI app, for uvicorn or to mount in your site
    (FastAPI/Starlette ``app.mount("/durable", ...)``, Django's ASGI
    router; see ``create_wsgi_app`` for Flask and Django's WSGI).

    ``source``: your ``Durable`` (actions publish through your app, with its
    routes), or a database URL (then ``schema``, and ``broker_url`` to
    publish resumed, forked and woken workflows at once; without it a
    worker's recovery sweep publishes them after ``enqueued_timeout``).
    ``token`` is required, as a choice: a string that every request must
    carry, or None when your site authenticates the users of this mount
    itself (CSRF is checked either way). ``read_only``: no actions.
    ``allowed_hosts``: the Host headers answered (default: any).
    """
    owned = isinstance(source, str)
    if isinstance(source, str):
        app = Celery("dbos-celery-dashboard", broker=broker_url or "memory://")
        durable = Durable(app, source, schema=schema,
                          database_retry_timeout=database_retry_timeout)  # fmt: skip
        publishes = broker_url is not None
    elif isinstance(source, Durable):
        durable, publishes = source, True
    else:
        raise TypeError(f"create_app takes a Durable or a database URL, not {source!r}")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValueError("token: a string of at least 8 characters (or None)")
    site = Site(durable, Guard.of(token), read_only, refresh, owned, publishes, templates(),
                title=f"dbos_celery · {durable.services.store.schema}")  # fmt: skip
    pages, actions = Pages(site), Actions(site)

    def metrics(request: Request) -> Response:
        return Response(exposition(durable), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        if owned:
            await run_in_threadpool(durable.close)

    middleware = [Middleware(Gate, site=site)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    routes = [
        Route("/", pages.index),
        Route("/workflows/{workflow_id:path}", pages.workflow),
        Route("/actions/{action}", actions.act, methods=["POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    starlette = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    starlette.state.site = site
    return starlette


def create_wsgi_app(source: Durable | str, *, token: str | None, **options: Any) -> WSGIApp:
    """``create_app`` as a WSGI app (a2wsgi), to mount under Flask
    (werkzeug's ``DispatcherMiddleware``) or a Django WSGI deployment."""
    from a2wsgi import ASGIMiddleware

    return ASGIMiddleware(create_app(source, token=token, **options))  # type: ignore[arg-type]
