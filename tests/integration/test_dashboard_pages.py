"""The list page on both backends: keyset pages that visit every workflow
once, newest first, forwards and back (ties in created_at included);
filters; counts by status, capped. No worker: the rows are made by
``start`` and a few statements."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from html import unescape
from types import SimpleNamespace

import pytest

from dbos_celery.dashboard import create_app, pages
from dbos_celery.store import inspect
from dbos_celery.store.inspect import PageQuery
from tests.apps.dashboard import build
from tests.support import BACKENDS, Env

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = BACKENDS
N = 130  # rows: three pages of 50


@pytest.fixture
def ns(env: Env) -> Iterator[SimpleNamespace]:
    built = build(env.vars())
    try:
        for i in range(N):
            wf = built.ship if i % 3 else built.fails
            wf.start(f"o-{i}", workflow_id=f"wf-{i:03d}")
        # ten rows made at one same instant, across the end of the first page
        # (newest first: 45 rows, then these): the cursor must break the tie
        tied = ", ".join(f"'wf-{i:03d}'" for i in range(75, 85))
        env.sql(f"UPDATE {{schema}}.workflows SET created_at = (SELECT created_at FROM "
                f"{{schema}}.workflows WHERE id = 'wf-080') WHERE id IN ({tied})")  # fmt: skip
        yield built
    finally:
        built.durable.close()


def _ids(html: str) -> list[str]:
    found = re.findall(r'<td class="id"><a href="[^"]*" title="([^"]*)"', html)
    return [unescape(x) for x in found]


def _link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a class="button" href="([^"]+)" rel="{rel}"', html)
    return unescape(found.group(1)) if found else None


def _newest_first(env: Env) -> list[str]:
    return [r[0] for r in env.sql(
        "SELECT id FROM {schema}.workflows ORDER BY created_at DESC, id DESC")]  # fmt: skip


def test_pages_visit_every_workflow_once_newest_first_and_back(
    env: Env, ns: SimpleNamespace
) -> None:
    client = TestClient(create_app(ns.durable, token=None))
    want = _newest_first(env)
    seen, pages_html, url = [], [], "/"
    while url is not None:
        html = client.get(url).text
        pages_html.append(html)
        seen += _ids(html)
        url = _link(html, "next")
    assert seen == want and len(pages_html) == 3
    assert _link(pages_html[0], "prev") is None
    # back from the last page: the pages before, the same rows
    back = _link(pages_html[2], "prev")
    assert back is not None
    html = client.get(back).text
    assert _ids(html) == _ids(pages_html[1])
    back = _link(html, "prev")
    assert back is not None and _ids(client.get(back).text) == _ids(pages_html[0])


def test_filters_and_capped_counts(
    env: Env, ns: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(create_app(ns.durable, token=None))
    failing = [w for w in _newest_first(env) if int(w[3:]) % 3 == 0]
    assert _ids(client.get("/?name=dash.fails").text) == failing[:50]
    assert _ids(client.get("/?id=wf-12").text) == [f"wf-12{i}" for i in range(9, -1, -1)]
    got = client.get("/?id=wf-007", follow_redirects=False)  # a whole id: its page
    assert got.status_code == 303 and got.headers["location"] == "/workflows/wf-007"
    created = {
        w: datetime.fromtimestamp(at, timezone.utc) if isinstance(at, float) else at
        for w, at in env.sql("SELECT id, created_at FROM {schema}.workflows")
    }
    at = created["wf-099"] + (created["wf-100"] - created["wf-099"]) / 2  # between the two
    iso = at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    later = _ids(client.get(f"/?from={iso}").text)
    assert later == [w for w in _newest_first(env) if created[w] >= at]
    assert "wf-100" in later and "wf-099" not in later
    html = client.get("/").text
    assert re.search(r'data-status="ENQUEUED">\s*ENQUEUED <b>130</b>', html)
    store = ns.durable.services.store
    assert store.now(inspect.status_counts, PageQuery(), 100) == {"ENQUEUED": 101}  # it stops
    monkeypatch.setattr(pages, "COUNT_CAP", 100)
    html = client.get("/?name=dash.ship").text
    assert re.search(r'data-status="ENQUEUED">\s*ENQUEUED <b>86</b>', html)
    html = client.get("/").text
    assert re.search(r'data-status="ENQUEUED">\s*ENQUEUED <b>100\+</b>', html)
    assert client.get("/?older=bogus").status_code == 400
