"""A recorded exception keeps its formatted traceback, for people to read
(the dashboard shows it); it is never read back."""

from __future__ import annotations

from dbos_celery.serialization import MAX_TRACEBACK, Serializer

codec = Serializer()


def _raise_deep(n: int) -> None:
    if n == 0:
        raise ValueError("deep down")
    _raise_deep(n - 1)


def test_a_recorded_error_keeps_its_traceback_for_people_only() -> None:
    try:
        _raise_deep(3)
    except ValueError as exc:
        data = codec.dumps_error(exc)
    record = codec.loads(data)
    assert (record["qualname"], record["message"]) == ("ValueError", "deep down")
    assert "in _raise_deep" in record["traceback"] and "raise ValueError" in record["traceback"]
    back = codec.loads_error(data)  # rebuilt as before: the traceback is not read back
    assert type(back) is ValueError and back.args == ("deep down",)
    assert "traceback" not in codec.loads(codec.dumps_error(KeyError("never raised")))


def test_a_huge_traceback_keeps_its_head_and_its_tail() -> None:
    try:
        raise ValueError("x" * 50_000 + " the end")
    except ValueError as exc:
        data = codec.dumps_error(exc)
    tb = codec.loads(data)["traceback"]
    assert len(tb) < MAX_TRACEBACK + 100
    assert tb.startswith("Traceback") and "characters cut" in tb and tb.endswith(" the end\n")
