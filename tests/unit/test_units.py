"""Pure logic: serialization, rebuilt exceptions, argument checks, errors."""

from __future__ import annotations

import datetime
import decimal

import pytest

from dbos_celery import errors
from dbos_celery.serialization import Serializer
from dbos_celery.validation import MAX_ID_LENGTH, check_id, check_timeout, check_topic


class Outer:
    class NestedError(Exception):
        pass


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def test_json_round_trips_values_kombu_supports() -> None:
    ser = Serializer()
    value = {"a": [1, 2.5, "x", None, True], "when": datetime.datetime(2026, 1, 2, 3, 4, 5)}
    back = ser.loads(ser.dumps(value))
    assert back["a"] == value["a"]
    assert back["when"] == value["when"]
    assert ser.loads(ser.dumps(decimal.Decimal("1.5"))) == decimal.Decimal("1.5")


def test_unserializable_value_raises_serialization_error() -> None:
    with pytest.raises(errors.SerializationError) as info:
        Serializer().dumps(object(), "message")
    assert "message" in str(info.value)
    assert isinstance(info.value, errors.DurableError)


def test_unknown_serializer_is_a_configuration_error() -> None:
    with pytest.raises(errors.ConfigurationError, match="no-such"):
        Serializer("no-such")


@pytest.mark.parametrize(
    "exc",
    [KeyError("k"), ValueError("bad", 2), Outer.NestedError("deep"),
     errors.MaxStepAttemptsError("s", 3, "boom"), errors.NonExistentWorkflowError("w")],
)  # fmt: skip
def test_recorded_exception_is_rebuilt_with_its_type_and_args(exc: BaseException) -> None:
    ser = Serializer()
    back = ser.loads_error(ser.dumps_error(exc))
    assert type(back) is type(exc)
    assert back.args == exc.args


def test_exception_that_cannot_be_rebuilt_becomes_step_error() -> None:
    ser = Serializer()
    back = ser.loads_error(ser.dumps_error(NeedsTwoArgs(1, 2)))
    assert isinstance(back, errors.StepError)
    assert back.type_name.endswith("NeedsTwoArgs")
    assert "1/2" in str(back)


def test_exception_from_a_module_not_imported_is_not_imported() -> None:
    ser = Serializer()
    data = ser.dumps({"module": "antigravity", "qualname": "Fly", "message": "m", "args": []})
    back = ser.loads_error(data)
    assert isinstance(back, errors.StepError)
    assert back.type_name == "antigravity.Fly"


@pytest.mark.parametrize(
    "bad", [None, 3, b"bytes", "", "x" * (MAX_ID_LENGTH + 1), "nul\x00byte", "\udcff"]
)
def test_bad_ids_are_invalid_argument_errors(bad: object) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        check_id(bad, "workflow_id")


def test_ids_at_the_limit_and_odd_characters_are_fine() -> None:
    assert check_id("x" * MAX_ID_LENGTH, "id")
    assert check_id("order-42'; DROP TABLE x;--", "id")
    assert check_topic(None) == ""
    assert check_topic("payment_status") == "payment_status"


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", True, None])
def test_bad_timeouts_are_rejected(bad: object) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        check_timeout(bad)


def test_result_timeout_is_also_a_builtin_timeout() -> None:
    exc = errors.ResultTimeoutError("w", 1.0)
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, errors.DurableError)


def test_lease_lost_escapes_except_exception() -> None:
    assert not issubclass(errors.LeaseLostError, Exception)


def test_non_determinism_message_names_both_steps() -> None:
    text = str(errors.NonDeterministicWorkflowError("wf", 3, "app.charge", "app.refund"))
    assert "app.charge" in text and "app.refund" in text and "#3" in text
