"""The dashboard's pure parts: the timeline of
checkpoints, what a workflow waits for, page cursors and filters, the
guard's token and CSRF values, and the bind rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from dbos_celery.dashboard import paging, views
from dbos_celery.dashboard.security import Guard, is_loopback
from dbos_celery.dashboard.serve import Refused, check_bind
from dbos_celery.keys import SEP, mailbox_key
from dbos_celery.serialization import Serializer
from dbos_celery.store.inspect import Checkpoint, PageQuery, WorkflowRecord

codec = Serializer()
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _cp(seq: int, name: str, output: object = None, at: float = 0.0) -> Checkpoint:
    return Checkpoint(seq, name, None if output is None else codec.dumps(output), None,
                      T0 + timedelta(seconds=at))  # fmt: skip


def test_the_timeline_folds_a_call_with_its_dispatch_record() -> None:
    rows = views.timeline(codec, T0, [
        _cp(0, "app.reserve", {"ok": 1}, 0.5),
        _cp(1, "durable.call:app.charge", {"charged": 42}, 3.0),
        _cp(2, "durable.dispatch:app.charge", {"task_id": "dbos-w-1", "started_by": "h:7:ab"},
            1.0),
        _cp(3, "durable.start:app.ship", "w-3", 3.5),
        _cp(4, "durable.deadline", 1_800_000_000.0, 4.0),
        _cp(5, "durable.dispatch:app.refund", {"task_id": "dbos-w-5"}, 5.0),
    ]).rows  # fmt: skip
    assert [(r.seq, r.kind, r.name) for r in rows] == [
        (0, "step", "app.reserve"), (1, "call", "app.charge"), (3, "child", "app.ship"),
        (4, "deadline", "durable.deadline"), (5, "call", "app.refund"),
    ]  # fmt: skip
    step, call, child, deadline, pending = rows
    assert step.took == 0.5 and step.output is not None and '"ok": 1' in step.output
    assert (call.task_id, call.started_by, call.took) == ("dbos-w-1", "h:7:ab", 2.0)
    assert call.output is not None and "42" in call.output
    assert child.child_id == "w-3"
    assert deadline.until == datetime.fromtimestamp(1_800_000_000.0, timezone.utc)
    assert (pending.task_id, pending.started_by, pending.output) == ("dbos-w-5", None, None)


def _record(status: str, waiting_for: str | None = None) -> WorkflowRecord:
    return WorkflowRecord(
        "w", "app.wf", status, b"{}", None, None, None, None, 0, None, T0, T0, None,
        T0 + timedelta(hours=1), waiting_for, None, None, 0,
    )  # fmt: skip


def test_what_a_parked_workflow_waits_for_is_read_from_its_key() -> None:
    got = views.wait_view(_record("WAITING", mailbox_key("w", "pay")), [])
    assert got is not None and (got.topic, got.parked) == ("pay", True)
    assert got.until == T0 + timedelta(hours=1)
    got = views.wait_view(_record("WAITING", f"e{SEP}other{SEP}stage"), [])
    assert got is not None and (got.event, got.other) == ("stage", "other")
    got = views.wait_view(_record("WAITING", f"d{SEP}child{SEP}"), [])
    assert got is not None and got.other == "child" and "outcome" in got.what
    assert views.wait_view(_record("SUCCESS"), []) is None


def test_cursors_round_trip_and_refuse_what_the_dashboard_did_not_make() -> None:
    for cursor in ((T0, "a/b?c"), (1_700_000_000.123456, "x")):
        assert paging.decode_cursor(paging.encode_cursor(cursor)) == cursor
    for bad in ("", "not base64!", "WzEsMl0", "eyJ4IjogMX0"):
        with pytest.raises(paging.BadQuery):
            paging.decode_cursor(bad)


def test_filters_are_read_and_written_back() -> None:
    q = paging.page_query({"status": "ERROR", "name": "app.wf", "id": "ord",
                           "from": "2026-01-01T10:00", "to": "2026-01-02T00:00:00Z",
                           "older": ""})  # fmt: skip
    assert q == PageQuery(
        status="ERROR",
        name="app.wf",
        id_prefix="ord",
        created_after=datetime(2026, 1, 1, 10, tzinfo=timezone.utc),
        created_before=datetime(2026, 1, 2, tzinfo=timezone.utc),
        limit=50,
    )
    assert paging.filters(q) == {
        "status": "ERROR",
        "name": "app.wf",
        "id": "ord",
        "from": "2026-01-01T10:00:00",
        "to": "2026-01-02T00:00:00",
    }
    for bad in ({"status": "RUNNING"}, {"from": "yesterday"}, {"id": "x" * 256},
                {"name": "a\x00b"}):  # fmt: skip
        with pytest.raises(paging.BadQuery):
            paging.page_query(bad)


def _request(headers: dict[str, str], cookies: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(headers=headers, cookies=cookies)


def test_the_guard_accepts_only_its_own_token_and_csrf_values() -> None:
    g = Guard.of("s3cret-token")
    assert g.token_matches("s3cret-token") and not g.token_matches("s3cret-tokeN")
    assert not g.token_matches(None) and not Guard.of(None).token_matches("anything")
    assert g.session_value() != "s3cret-token" and Guard.of("other-token").session_value() != (
        g.session_value()
    )
    value = g.csrf_value("nonce")
    same_origin = {"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8765"}
    assert g.csrf_ok(_request(same_origin, {"dbos_celery_csrf": "nonce"}), value)  # type: ignore[arg-type]
    for headers, cookies, given in (
        (same_origin, {"dbos_celery_csrf": "other"}, value),  # another browser's value
        (same_origin, {}, value),  # no cookie
        (same_origin, {"dbos_celery_csrf": "nonce"}, None),  # no value
        ({**same_origin, "origin": "http://evil.example"}, {"dbos_celery_csrf": "nonce"}, value),
        ({**same_origin, "origin": "null"}, {"dbos_celery_csrf": "nonce"}, value),
        ({**same_origin, "sec-fetch-site": "cross-site"}, {"dbos_celery_csrf": "nonce"}, value),
    ):
        assert not g.csrf_ok(_request(headers, cookies), given)  # type: ignore[arg-type]
    # every process of one dashboard makes the same values from the same token
    assert Guard.of("s3cret-token").csrf_value("nonce") == value


def test_a_non_loopback_bind_needs_a_token() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com", "localhost.evil.example"):
        assert not is_loopback(host)
        with pytest.raises(Refused):
            check_bind(host, None)
        check_bind(host, "a-token-given")


def test_an_error_shows_with_its_traceback() -> None:
    try:
        raise KeyError("no such order")
    except KeyError as exc:
        data = codec.dumps_error(exc)
    shown = views.error_view(codec, data)
    assert shown is not None and shown.type == "KeyError" and shown.message == "'no such order'"
    assert shown.traceback is not None and 'raise KeyError("no such order")' in shown.traceback
    assert shown.summary == "KeyError: 'no such order'"
    old = codec.dumps({"module": "app", "qualname": "Oops", "message": "m", "args": []})
    assert views.error_view(codec, old) == views.ErrorView("app.Oops", "m", None)
    assert views.error_view(codec, b"\xff not json").type == "(unreadable error)"
