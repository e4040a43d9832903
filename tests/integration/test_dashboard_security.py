"""The dashboard's guard against a real database (no worker needed): every
action refused in read-only mode, without the token and without the CSRF
value, and allowed with them; pages behind the token; hostile strings
escaped in the HTML of every page; the security headers; mounting under
FastAPI and as WSGI. Browsers and real workers: tests/acceptance/test_dashboard.py."""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote
from wsgiref.util import setup_testing_defaults

import pytest

from dbos_celery.dashboard import create_app, create_wsgi_app
from dbos_celery.dashboard.security import CSRF_COOKIE, SESSION_COOKIE
from dbos_celery.runner import execute
from tests.apps.dashboard import build
from tests.support import Env
from tests.web import HOSTILE, HOSTILE_ID, HOSTILE_TOPIC, TOKEN, csrf_of

with warnings.catch_warnings():  # starlette's note on httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

# Starlette's TestClient decodes a path twice ("%252F" arrives as "/"; uvicorn,
# as the browser test shows, decodes once): here, an id without a percent sign
HOSTILE_ID = HOSTILE_ID.replace("%", "")

ACTIONS = {
    "send": {"topic": "go", "body": '{"ok": true}'},
    "cancel": {},
    "resume": {},
    "fork": {"from_step": "0", "new_id": "forked"},
}


@pytest.fixture
def ns(env: Env) -> Iterator[SimpleNamespace]:
    """Workflows made without a worker: ``queued`` (ENQUEUED), ``stopped``
    (CANCELLED), ``done`` (SUCCESS, run in this process), and a hostile one
    (ERROR, run here, with a message waiting on a hostile topic)."""
    built = build(env.vars())
    d = built.durable
    try:
        built.ship.start("o-1", workflow_id="queued")
        built.ship.start("o-2", workflow_id="stopped")
        d.cancel("stopped")
        built.ship.start("o-3", workflow_id="done")
        execute(d.services, "done", d.workflows)
        built.fails.start("0000-9", HOSTILE, workflow_id=HOSTILE_ID)
        execute(d.services, HOSTILE_ID, d.workflows)
        d.send(HOSTILE_ID, {"html": HOSTILE}, topic=HOSTILE_TOPIC)
        yield built
    finally:
        d.close()


def _state(env: Env) -> list[tuple[Any, ...]]:
    """Everything an action could change."""
    return [
        *env.sql("SELECT id, status, updated_at FROM {schema}.workflows ORDER BY id"),
        *env.sql("SELECT destination_id, topic FROM {schema}.messages ORDER BY id"),
    ]


def _target(action: str) -> str:
    return "stopped" if action == "resume" else "queued" if action == "cancel" else "done"


def _post(client: TestClient, action: str, csrf: str | None, **extra: str) -> Any:
    form = {"id": _target(action), **ACTIONS[action], **extra}
    if csrf is not None:
        form["csrf"] = csrf
    return client.post(f"/actions/{action}", data=form, follow_redirects=False)


def _logged_in(app: Any) -> tuple[TestClient, str]:
    """A client with the session cookie, and the CSRF value of its forms."""
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    got = client.get(f"/workflows/done?token={TOKEN}")
    assert got.status_code == 200 and SESSION_COOKIE in client.cookies
    return client, app.state.site.guard.csrf_value(client.cookies[CSRF_COOKIE])


def test_every_action_is_refused_in_read_only_mode(env: Env, ns: SimpleNamespace) -> None:
    app = create_app(ns.durable, token=TOKEN, read_only=True)
    client, value = _logged_in(app)  # a valid CSRF value
    page = client.get("/workflows/done").text
    assert "Actions" not in page and "/actions/" not in page and "read-only" in page
    before = _state(env)
    for action in ACTIONS:
        for confirmed in ("", "yes"):
            got = _post(client, action, value, confirmed=confirmed)
            assert got.status_code == 403 and "read-only" in got.text, action
    assert _state(env) == before


def test_every_action_needs_the_token_and_the_csrf_value(env: Env, ns: SimpleNamespace) -> None:
    app = create_app(ns.durable, token=TOKEN)
    before = _state(env)
    stranger = TestClient(app, base_url="http://127.0.0.1:8765")
    client, csrf = _logged_in(app)
    assert csrf_of(client.get("/workflows/done").text) == csrf
    evil = {"origin": "http://evil.example"}
    for action in ACTIONS:
        got = _post(stranger, action, csrf, confirmed="yes")
        assert got.status_code == 401, action  # no session
        got = stranger.post(
            f"/actions/{action}",
            data={"id": _target(action), **ACTIONS[action], "confirmed": "yes"},
            headers={"authorization": "Bearer wrong-token"},
        )
        assert got.status_code == 401, action
        assert _post(client, action, None, confirmed="yes").status_code == 403, action
        assert _post(client, action, "0" * 64, confirmed="yes").status_code == 403, action
        got = client.post(f"/actions/{action}", headers=evil,
                          data={"id": _target(action), **ACTIONS[action], "csrf": csrf,
                                "confirmed": "yes"})  # fmt: skip
        assert got.status_code == 403, action
        got = client.post(f"/actions/{action}", headers={"sec-fetch-site": "cross-site"},
                          data={"id": _target(action), **ACTIONS[action], "csrf": csrf,
                                "confirmed": "yes"})  # fmt: skip
        assert got.status_code == 403, action
    assert _state(env) == before

    # with both, each asks first (nothing changes), then acts
    for action in ACTIONS:
        asked = _post(client, action, csrf)
        assert asked.status_code == 200 and "Confirm: " + action in asked.text, asked.text
        assert _state(env) == before
    for action in ("cancel", "resume", "fork"):
        confirmed = _post(client, action, csrf_of(_post(client, action, csrf).text),
                          confirmed="yes")  # fmt: skip
        assert confirmed.status_code == 200 and 'id="result"' in confirmed.text, action
    sent = _post(client, "send", csrf, confirmed="yes", key="k1")
    again = _post(client, "send", csrf, confirmed="yes", key="k1")  # the same form twice
    assert sent.status_code == again.status_code == 200 and "Message sent" in sent.text
    statuses = dict(env.sql("SELECT id, status FROM {schema}.workflows"))
    assert statuses["queued"] == "CANCELLED" and statuses["stopped"] == "ENQUEUED"
    assert statuses["forked"] == "ENQUEUED"
    assert env.sql("SELECT count(*) FROM {schema}.messages WHERE destination_id = 'done'") == [(1,)]


def test_a_script_acts_with_the_bearer_token_and_no_csrf(env: Env, ns: SimpleNamespace) -> None:
    client = TestClient(create_app(ns.durable, token=TOKEN))
    got = client.post("/actions/cancel", data={"id": "queued", "confirmed": "yes"},
                      headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert got.status_code == 200 and "Cancelled" in got.text
    assert env.sql("SELECT status FROM {schema}.workflows WHERE id = 'queued'") == [("CANCELLED",)]


def test_without_a_token_writes_still_need_the_csrf_value(env: Env, ns: SimpleNamespace) -> None:
    """token=None: the mounting site authenticates; CSRF is still checked."""
    client = TestClient(create_app(ns.durable, token=None))
    csrf = csrf_of(client.get("/workflows/done").text)
    before = _state(env)
    for action in ACTIONS:
        assert _post(client, action, None, confirmed="yes").status_code == 403
    assert _state(env) == before
    assert _post(client, "cancel", csrf, confirmed="yes").status_code == 200
    assert env.sql("SELECT status FROM {schema}.workflows WHERE id = 'queued'") == [("CANCELLED",)]


def test_pages_need_the_token(env: Env, ns: SimpleNamespace) -> None:
    client = TestClient(create_app(ns.durable, token=TOKEN))
    html = {"accept": "text/html"}  # a browser: the login form
    for path in ("/", "/workflows/done", "/?status=ERROR"):
        got = client.get(path, headers=html)
        assert got.status_code == 401 and 'name="token"' in got.text and "dash.ship" not in got.text
        assert client.get(path).status_code == 401  # a script: plain text
    assert client.get("/metrics", headers=html).status_code == 401
    assert client.get("/?token=wrong-token").status_code == 401
    assert client.get("/static/style.css").status_code == 200
    got = client.get(f"/?status=SUCCESS&token={TOKEN}", follow_redirects=False)
    assert got.status_code == 303 and got.headers["location"] == "/?status=SUCCESS"
    cookie = got.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert client.get("/").status_code == 200
    other = TestClient(client.app)
    login = other.post("/login", data={"token": TOKEN, "next": "/workflows/done"},
                       follow_redirects=False)  # fmt: skip
    assert login.status_code == 303 and login.headers["location"] == "/workflows/done"
    assert other.get("/workflows/done").status_code == 200
    assert other.post("/login", data={"token": TOKEN, "next": "//evil.example/"},
                      follow_redirects=False).headers["location"] == "/"  # fmt: skip
    bearer = TestClient(client.app).get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200 and "dbos_celery_workflows" in bearer.text


def _unescaped(html: str) -> list[str]:
    """Markup of the hostile strings that reached the HTML unescaped."""
    return [s for s in ("<script>window.__xss", "<b data-xss", "<img src=x") if s in html]


def test_hostile_strings_are_escaped_on_every_page(env: Env, ns: SimpleNamespace) -> None:
    client = TestClient(create_app(ns.durable, token=None))
    pages = [client.get("/"), client.get(f"/?id={quote(HOSTILE_ID[:5], safe='')}")]
    detail = client.get(f"/workflows/{quote(HOSTILE_ID, safe='')}")
    assert detail.status_code == 200 and "PaymentDeclined" in detail.text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in detail.text  # shown, as text
    pages.append(detail)
    csrf = csrf_of(detail.text)
    for action, extra in (
        ("send", {"topic": HOSTILE_TOPIC, "body": json.dumps(HOSTILE)}),
        ("cancel", {}),
        ("fork", {"from_step": "0", "new_id": HOSTILE}),
    ):
        form = {"id": HOSTILE_ID, "csrf": csrf, **extra}
        asked = client.post(f"/actions/{action}", data=form)
        assert asked.status_code == 200, asked.text
        pages.append(asked)
        pages.append(client.post(f"/actions/{action}", data={**form, "confirmed": "yes"}))
    pages.append(client.get(f"/workflows/no{quote(HOSTILE, safe='')}"))  # 404, naming it
    pages.append(client.get(f"/?name={quote(HOSTILE, safe='')}"))
    pages.append(client.get(f"/?status={quote(HOSTILE, safe='')}"))  # 400, naming it
    for got in pages:
        assert _unescaped(got.text) == [], (got.url, got.status_code)
    assert [p.status_code for p in pages[-3:]] == [404, 200, 400]


def test_every_response_carries_the_security_headers(ns: SimpleNamespace) -> None:
    client = TestClient(create_app(ns.durable, token=TOKEN))
    for got in (client.get("/"), client.get(f"/?token={TOKEN}", follow_redirects=False),
                client.get("/workflows/done"), client.get("/static/htmx.min.js")):  # fmt: skip
        csp = got.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert got.headers["x-frame-options"] == "DENY"
        assert got.headers["x-content-type-options"] == "nosniff"


def test_it_mounts_under_fastapi_and_as_wsgi(ns: SimpleNamespace) -> None:
    from fastapi import FastAPI

    api = FastAPI()
    api.mount("/durable", create_app(ns.durable, token=None))
    got = TestClient(api).get("/durable/")
    assert got.status_code == 200 and 'href="/durable/workflows/done"' in got.text
    assert 'src="/durable/static/htmx.min.js"' in got.text
    assert TestClient(api).get("/durable/workflows/done").status_code == 200

    wsgi = create_wsgi_app(ns.durable, token=None)
    environ: dict[str, Any] = {"SCRIPT_NAME": "/ops/durable", "PATH_INFO": "/",
                               "wsgi.input": io.BytesIO()}  # fmt: skip
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(wsgi(environ, lambda s, h, exc=None: status.append(s)))  # type: ignore[arg-type]
    assert status == ["200 OK"]
    assert re.search(rb'href="/ops/durable/workflows/done"', body)
