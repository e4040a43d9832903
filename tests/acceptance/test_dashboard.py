"""The dashboard against workflows that a real `celery worker` ran, looked at
in a real headless Chromium (Debian's, driven by Playwright).

One worker run is shared by the module (tests/apps/dashboard.py): an order
with a step, a durable.call and a child; two failures with tracebacks; a
workflow waiting in recv while holding its slot; parked ones; a cancelled
one; and hostile ids, topics, keys and payloads. Screenshots of every page
are kept in /tmp/dbos_celery_dashboard (tests/web.py). The security checks
that need no worker (tokens, CSRF, read-only) are in
tests/integration/test_dashboard_security.py.

Under xdist each module runs on one worker process only if its tests do:
the pages, the live refresh and the actions are therefore one test, in
steps, so that the worker run and the browser are made once.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbos_celery.dashboard import create_app
from tests.apps.dashboard import build
from tests.support import Env, WorkerProcess, wait_for
from tests.web import (
    HOSTILE,
    HOSTILE_ID,
    HOSTILE_TOPIC,
    HOSTILE_TOPIC2,
    TOKEN,
    Server,
    chromium,
    injected,
    screenshot,
)

ORDER, BROKEN, BROKEN_HOSTILE = "order-1", "broken-1", "broken-2"
PARKED, CANCELLED, WAITING = "parked-1", "cancelled-1", "waiting-1"
ACT_SEND, ACT_CANCEL = "act-send", "act-cancel"
ITEMS = ["book", "lamp"]


def _status(ns: SimpleNamespace, wid: str) -> str:
    return str(ns.durable.retrieve(wid).status().status)


def _wait_status(ns: SimpleNamespace, wid: str, status: str, timeout: float = 60.0) -> None:
    wait_for(lambda: _status(ns, wid) == status, timeout,
             lambda: f"{wid} is {_status(ns, wid)}, not {status}")  # fmt: skip


def _checkpoints(ns: SimpleNamespace, wid: str) -> list[Any]:
    return list(ns.durable.list_steps(wid))


@pytest.fixture(scope="module")
def world(services: None) -> Iterator[SimpleNamespace]:
    """The workflows, run by one worker (parking off, so that ``waiting-1``
    keeps its slot; the ``dash.parks`` ones park before their time limit),
    and the dashboard served to a browser."""
    env = Env(schema=f"t_{uuid.uuid4().hex[:12]}")
    env.create()
    worker = WorkerProcess(env, "tests.apps.dashboard", concurrency=3, name="dash",
                           extra_env={"DBOS_TEST_PARK_AFTER": "none"})  # fmt: skip
    ns = build(env.vars())
    try:
        worker.wait_ready()
        d = ns.durable
        order = ns.order.start(ORDER, ITEMS, workflow_id=ORDER)
        ns.fails.start("0000-1111", "card declined: insufficient funds", workflow_id=BROKEN)
        ns.fails.start("0000-2222", HOSTILE, workflow_id=BROKEN_HOSTILE)
        for wid, topic, remark in (
            (PARKED, "approval", "waits for a manager"),
            (HOSTILE_ID, HOSTILE_TOPIC, HOSTILE),
            (CANCELLED, "approval", "to be cancelled"),
            (ACT_SEND, "go", "sent to from the dashboard"),
            (ACT_CANCEL, "go", "cancelled from the dashboard"),
        ):
            ns.parks.start(topic, remark, workflow_id=wid)
        d.send(PARKED, {"note": "not this one"}, topic="other")
        d.send(HOSTILE_ID, {"html": HOSTILE}, topic=HOSTILE_TOPIC2)
        result = order.result(timeout=60)
        for wid in (BROKEN, BROKEN_HOSTILE):
            _wait_status(ns, wid, "ERROR")
        for wid in (PARKED, HOSTILE_ID, CANCELLED, ACT_SEND, ACT_CANCEL):
            _wait_status(ns, wid, "WAITING")
        assert d.cancel(CANCELLED)
        # last: it holds a worker slot for as long as the module runs
        ns.waits.start("reply", "holds its slot", workflow_id=WAITING)
        wait_for(lambda: [c.name for c in _checkpoints(ns, WAITING)][-1:] == ["durable.deadline"],
                 30, worker.describe)  # fmt: skip
        child = next(c.output for c in _checkpoints(ns, ORDER)
                     if c.name.startswith("durable.start:"))  # fmt: skip
        app = create_app(d, token=TOKEN, refresh=1.0)
        with Server(app) as server, chromium() as browser:
            yield SimpleNamespace(env=env, ns=ns, worker=worker, url=server.url, browser=browser,
                                  result=result, child=child)  # fmt: skip
    finally:
        worker.kill()
        ns.durable.close()
        env.close()


def _page(world: SimpleNamespace) -> Any:
    page = world.browser.new_page(viewport={"width": 1360, "height": 900})
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.set_default_timeout(20_000)
    return page


def _open(page: Any, world: SimpleNamespace, wid: str) -> str:
    page.goto(f"{world.url}/workflows/{quote(wid, safe='')}")
    assert page.locator("h1.wid").inner_text() == wid
    return str(page.inner_text("main"))


def _clean(page: Any) -> None:
    assert injected(page) == [None, 0], "markup from the database was rendered as markup"
    assert page.dialogs == []


def test_dashboard_shows_what_real_workers_ran_and_acts_on_it(world: SimpleNamespace) -> None:
    page = _page(world)
    _list_page(page, world)
    _order_pages(page, world)
    _error_pages(page, world)
    _waiting_pages(page, world)
    _hostile_strings_stay_text(page, world)
    _metrics(page, world)
    _live_refresh(page, world)
    _actions(page, world)


def _list_page(page: Any, world: SimpleNamespace) -> None:
    """``/?token=`` logs in and drops the token from the URL; newest first;
    counts by status; filters."""
    page.goto(f"{world.url}/?token={TOKEN}")
    assert page.url == f"{world.url}/"
    main = page.inner_text("main")
    ids = page.locator("td.id a").all_inner_texts()
    order_child = world.child
    for wid in (ORDER, order_child, BROKEN, BROKEN_HOSTILE, PARKED, HOSTILE_ID, CANCELLED,
                WAITING, ACT_SEND, ACT_CANCEL):  # fmt: skip
        assert wid in ids, f"{wid} not listed"
    assert ids[0] == WAITING  # the newest first
    chips = {c.get_attribute("data-status"): c.inner_text()
             for c in page.locator(".counts a.chip[data-status]").all()}  # fmt: skip
    assert chips["WAITING"].split()[-1] == "4" and chips["ERROR"].split()[-1] == "2"
    assert chips["PENDING"].split()[-1] == "1" and chips["CANCELLED"].split()[-1] == "1"
    assert chips["SUCCESS"].split()[-1] == "2"
    assert "PaymentDeclined" in main
    _clean(page)
    screenshot(page, "list")
    page.locator(".counts a.chip[data-status=WAITING]").click()
    page.wait_for_url("**/?status=WAITING")
    assert sorted(page.locator("td.id a").all_inner_texts()) == sorted(
        [PARKED, HOSTILE_ID, ACT_SEND, ACT_CANCEL]
    )
    page.fill("input[name=id]", "broken-")
    page.select_option("select[name=status]", "")
    page.locator("form.filters button").click()
    assert sorted(page.locator("td.id a").all_inner_texts()) == [BROKEN, BROKEN_HOSTILE]
    screenshot(page, "list-filtered")


def _order_pages(page: Any, world: SimpleNamespace) -> None:
    main = _open(page, world, ORDER)
    assert "SUCCESS" in main and "TRACK-order-1" in main
    rows = {r.locator("td").nth(0).inner_text(): r.inner_text()
            for r in page.locator("table.timeline tbody tr").all()}  # fmt: skip
    kinds = [page.locator(f"table.timeline tbody tr:nth-child({i + 1}) .kind").inner_text()
             for i in range(len(rows))]  # fmt: skip
    assert kinds == ["step", "call", "child", "child result", "set_event"]
    call = rows["1"]
    assert "dash.charge_card" in call and "task dbos-order-1-1" in call
    assert "ran on" in call and socket.gethostname() in call  # the worker that ran it
    assert world.child in rows["3"]
    events = page.inner_text("table.events")
    assert "stage" in events and "shipped" in events
    assert world.child in page.inner_text("table.children")
    _clean(page)
    screenshot(page, "workflow-order")
    page.locator("table.children a").click()
    assert page.locator("h1.wid").inner_text() == world.child
    assert ORDER in page.inner_text(".summary")  # its parent
    screenshot(page, "workflow-child")


def _error_pages(page: Any, world: SimpleNamespace) -> None:
    main = _open(page, world, BROKEN)
    assert "ERROR" in main
    box = page.inner_text(".error-box")
    assert "tests.apps.dashboard.PaymentDeclined: card declined: insufficient funds" in box
    tb = page.inner_text(".error-box pre.traceback")
    assert "Traceback (most recent call last)" in tb
    assert "in _check_card" in tb and "raise PaymentDeclined(why)" in tb
    assert "Resume…" not in main  # an ERROR cannot be resumed: fork it
    _clean(page)
    screenshot(page, "workflow-error")


def _waiting_pages(page: Any, world: SimpleNamespace) -> None:
    main = _open(page, world, PARKED)
    waiting = page.inner_text("section.waiting")
    assert "a message on topic approval" in waiting and "Parked" in waiting
    boxes = page.inner_text("table.mailboxes")
    assert "other" in boxes and "1" in boxes
    assert "waits for a manager" in page.inner_text("table.events")
    assert "WAITING" in main
    screenshot(page, "workflow-parked")

    main = _open(page, world, WAITING)
    assert "PENDING" in main
    waiting = page.inner_text("section.waiting")
    assert "holds its worker slot" in waiting and "Until" in waiting
    assert "alive" in page.inner_text(".summary")
    screenshot(page, "workflow-waiting")

    main = _open(page, world, CANCELLED)
    assert "CANCELLED" in main and page.locator("text=Resume…").count() == 1
    screenshot(page, "workflow-cancelled")


def _hostile_strings_stay_text(page: Any, world: SimpleNamespace) -> None:
    """Ids, topics, event keys, inputs, outputs, messages and error messages
    full of markup show as text, on every page they appear on."""
    page.goto(f"{world.url}/")
    _clean(page)
    page.get_by_title(HOSTILE_ID, exact=True).click()  # the list's link escapes the id
    assert page.locator("h1.wid").inner_text() == HOSTILE_ID
    main = page.inner_text("main")
    assert HOSTILE_TOPIC in page.inner_text("section.waiting")
    assert HOSTILE_TOPIC2 in page.inner_text("table.mailboxes")
    assert HOSTILE in page.inner_text("table.events")  # its key and its value
    quoted = json.dumps(HOSTILE)[1:-1]  # values show as JSON
    assert main.count(quoted) >= 2  # in the inputs and the event's value
    page.locator("details:has(table.messages) summary").click()
    page.locator("table.timeline details summary").first.click()  # the note's output
    assert quoted in page.inner_text("table.messages")
    assert quoted in page.inner_text("table.timeline")
    _clean(page)
    screenshot(page, "workflow-hostile")

    main = _open(page, world, BROKEN_HOSTILE)
    assert HOSTILE in page.inner_text(".error-box p.err")
    _clean(page)

    # the confirmation of a send echoes the topic and the body
    page.goto(f"{world.url}/workflows/{quote(HOSTILE_ID, safe='')}")
    page.fill("form[action$='/actions/send'] input[name=topic]", HOSTILE_TOPIC)
    page.fill("form[action$='/actions/send'] textarea[name=body]", json.dumps({"x": HOSTILE}))
    page.locator("form[action$='/actions/send'] button").click()
    assert page.locator("h1").inner_text() == "Confirm: send", page.inner_text("main")
    assert HOSTILE_TOPIC in page.inner_text("main")
    _clean(page)


def _metrics(page: Any, world: SimpleNamespace) -> None:
    page.goto(f"{world.url}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(page.inner_text("body"))}
    assert families and all(name.startswith("dbos_celery_") for name in families)
    got = {(s.labels.get("status"), s.labels.get("name")): s.value
           for s in families["dbos_celery_workflows"].samples}  # fmt: skip
    assert got[("SUCCESS", "dash.order")] == 1 and got[("SUCCESS", "dash.ship")] == 1
    assert got[("ERROR", "dash.fails")] == 2 and got[("WAITING", "dash.parks")] == 4
    assert got[("PENDING", "dash.waits")] == 1 and got[("CANCELLED", "dash.parks")] == 1
    assert families["dbos_celery_parked_workflows"].samples[0].value == 4
    live = {s.labels["destination"]: s.value
            for s in families["dbos_celery_messages_waiting"].samples}  # fmt: skip
    assert live == {"live": 2, "finished": 0}
    assert families["dbos_celery_live_workers"].samples[0].value >= 1
    assert families["dbos_celery_steps_per_second"].samples[0].value > 0


def _live_refresh(page: Any, world: SimpleNamespace) -> None:
    """The list refreshes itself (htmx, served from the package): a new
    workflow shows up without a reload."""
    page.goto(f"{world.url}/")
    page.evaluate("window.__stayed = 1")
    world.ns.ship.start("live-1", workflow_id="live-1")
    page.locator("#rows td.id a", has_text="live-1").wait_for()  # no eval: the page's CSP
    assert page.evaluate("window.__stayed") == 1  # the same page: refreshed in place
    _wait_status(world.ns, "live-1", "SUCCESS")


def _confirm_and_report(page: Any, form: str, fill: dict[str, str], name: str) -> str:
    """Submit a workflow page's action form, check that it asks first, confirm,
    and return the report's text."""
    for field, value in fill.items():
        page.fill(f"{form} [name={field}]", value)
    page.locator(f"{form} button").click()
    assert page.locator("h1").inner_text().startswith("Confirm: "), page.inner_text("main")
    screenshot(page, f"confirm-{name}")
    page.locator("#confirm").click()
    report = page.locator("#result").inner_text()
    screenshot(page, f"result-{name}")
    return str(report)


def _actions(page: Any, world: SimpleNamespace) -> None:
    ns = world.ns
    _open(page, world, ACT_SEND)
    report = _confirm_and_report(page, "form[action$='/actions/send']",
                                 {"topic": "go", "body": '{"approved": true, "by": "ops"}'},
                                 "send")  # fmt: skip
    assert "Message sent" in report
    assert ns.durable.retrieve(ACT_SEND).result(timeout=30) == {"approved": True, "by": "ops"}

    _open(page, world, ACT_CANCEL)
    report = _confirm_and_report(page, "form[action$='/actions/cancel']", {}, "cancel")
    assert "Cancelled" in report and _status(ns, ACT_CANCEL) == "CANCELLED"

    _open(page, world, ACT_CANCEL)
    report = _confirm_and_report(page, "form[action$='/actions/resume']", {}, "resume")
    assert "Resumed" in report and "published to its queue" in report
    _wait_status(ns, ACT_CANCEL, "WAITING")  # published, run again, parked again

    seq = next(c.seq for c in _checkpoints(ns, ORDER) if c.name == "durable.set_event")
    _open(page, world, ORDER)
    report = _confirm_and_report(page, "form[action$='/actions/fork']",
                                 {"from_step": str(seq), "new_id": "order-1-fork"},
                                 "fork")  # fmt: skip
    assert "Forked" in report and "order-1-fork" in report
    assert ns.durable.retrieve("order-1-fork").result(timeout=30) == world.result
