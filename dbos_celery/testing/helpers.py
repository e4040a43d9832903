"""What a test does with its workflows: run one to its end, send it a
message, read and assert the checkpoints it recorded.

Each takes the Durable explicitly; the plugin's fixtures (``durable_run``,
``durable_send``, ``durable_steps``, ``assert_steps``) are these with the
test's Durable filled in.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Task

from ..errors import ResultTimeoutError
from ..keys import CALL_PREFIX, START_PREFIX
from ..workflow import StepInfo, Workflow, WorkflowHandle

if TYPE_CHECKING:
    from ..durable import Durable

R = TypeVar("R")

# checkpoints that are the library's bookkeeping rather than something the
# workflow did: the durable deadline of a wait, the dispatch record of a
# durable.call (its outcome, ``durable.call:<task>``, is kept)
BOOKKEEPING = ("durable.deadline", "durable.dispatch:*")
"""The checkpoints that ``durable_steps``, ``assert_steps`` and
``recorded_steps`` leave out unless given ``ignore=()``: the durable
deadline of a wait and the dispatch record of a ``durable.call`` (a
trailing ``*`` matches any suffix)."""

# the default wait for a workflow to finish, in seconds
TIMEOUT = 30.0

WorkflowRef = WorkflowHandle[Any] | str


def workflow_id_of(ref: WorkflowRef) -> str:
    """The id of a handle, or the id itself."""
    if isinstance(ref, WorkflowHandle):
        return ref.workflow_id
    if isinstance(ref, str):
        return ref
    raise TypeError(f"a workflow handle or id expected, got {type(ref).__name__}")


def run_workflow(
    workflow: Workflow[..., R],
    *args: Any,
    workflow_id: str | None = None,
    result_timeout: float = TIMEOUT,
    **kwargs: Any,
) -> R:
    """Start ``workflow`` (a worker must run it; ``kwargs`` go to ``start``,
    so ``timeout=`` is the workflow's own) and return its result, or raise
    its error. A workflow that has not finished after ``result_timeout``
    seconds fails the test with its status and what it recorded."""
    __tracebackhide__ = True
    handle = workflow.start(*args, workflow_id=workflow_id, **kwargs)
    try:
        return handle.result(timeout=result_timeout)
    except ResultTimeoutError:
        status = handle.status()
        note = f"; {status.note}" if status.note else ""
        steps = ", ".join(_describe(s) for s in _steps(handle)) or "none"
        raise AssertionError(
            f"workflow {handle.workflow_id!r} ({workflow.name}) did not finish within "
            f"{result_timeout:g} s: status {status.status}{note}; checkpoints: {steps}"
        ) from None


def send_message(
    durable: Durable,
    to: WorkflowRef,
    message: Any,
    topic: str | None = None,
    *,
    idempotency_key: str | None = None,
) -> None:
    """``durable.send`` to a workflow given by handle or id."""
    durable.send(workflow_id_of(to), message, topic, idempotency_key=idempotency_key)


def recorded_steps(
    durable: Durable, workflow: WorkflowRef, *, ignore: Iterable[str] = BOOKKEEPING
) -> list[StepInfo]:
    """The checkpoints a workflow recorded, in order, but those whose name
    matches a pattern of ``ignore`` (fnmatch; default :data:`BOOKKEEPING`)."""
    patterns = tuple(ignore)
    steps = durable.list_steps(workflow_id_of(workflow))
    return [s for s in steps if not any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]


def assert_recorded_steps(
    durable: Durable,
    workflow: WorkflowRef,
    expected: Sequence[Any],
    *,
    ignore: Iterable[str] = BOOKKEEPING,
) -> list[StepInfo]:
    """Assert the checkpoints a workflow recorded (see :func:`recorded_steps`),
    one item of ``expected`` per checkpoint, in order. An item is a
    checkpoint name, a step (its name), a Celery task (its ``durable.call``
    outcome, ``durable.call:<task>``), a workflow (its start as a child,
    ``durable.start:<workflow>``), or a pair of one of those and the output
    expected. Fails with both lists side by side; returns the checkpoints."""
    __tracebackhide__ = True
    got = recorded_steps(durable, workflow, ignore=ignore)
    wanted = [_expectation(item) for item in expected]
    if len(got) == len(wanted) and all(_matches(s, w) for s, w in zip(got, wanted, strict=True)):
        return got
    raise AssertionError(_mismatch(workflow_id_of(workflow), wanted, got))


# an expected checkpoint: its name, and its output when one is given
_Expected = tuple[str, bool, Any]


def _expectation(item: Any) -> _Expected:
    if isinstance(item, str):
        return item, False, None
    if isinstance(item, tuple) and len(item) == 2:
        return _name_of(item[0]), True, item[1]
    return _name_of(item), False, None


def _name_of(item: Any) -> str:
    """The checkpoint name an expected item stands for."""
    if isinstance(item, str):
        return item
    if isinstance(item, Workflow):
        return START_PREFIX + item.name  # a child workflow's start
    if isinstance(item, Task):
        return CALL_PREFIX + str(item.name)  # a durable.call's outcome
    name = getattr(item, "name", None)  # a step
    if isinstance(name, str):
        return name
    raise TypeError(
        "an expected checkpoint is a name, a step, a Celery task (its durable.call), "
        f"a workflow (its start as a child), or (one of those, output); got {item!r}"
    )


def _matches(step: StepInfo, wanted: _Expected) -> bool:
    name, has_output, output = wanted
    return step.name == name and (not has_output or (step.error is None and step.output == output))


def _describe(step: StepInfo) -> str:
    if step.error is not None:
        return f"{step.name} raised {step.error}"
    return f"{step.name} -> {step.output!r}"


def _describe_expected(wanted: _Expected) -> str:
    name, has_output, output = wanted
    return f"{name} -> {output!r}" if has_output else name


def _mismatch(workflow_id: str, wanted: list[_Expected], got: list[StepInfo]) -> str:
    lines = [f"workflow {workflow_id!r} recorded other steps than expected:"]
    rows = [("  expected", "recorded")]
    for i in range(max(len(wanted), len(got))):
        w = _describe_expected(wanted[i]) if i < len(wanted) else "(nothing)"
        g = f"{got[i].seq}: {_describe(got[i])}" if i < len(got) else "(nothing)"
        same = i < len(wanted) and i < len(got) and _matches(got[i], wanted[i])
        rows.append((("  " if same else "! ") + w, g))
    width = max(len(left) for left, _ in rows)
    lines += [f"  {left:<{width}}   {right}" for left, right in rows]
    return "\n".join(lines)


def _steps(handle: WorkflowHandle[Any]) -> list[StepInfo]:
    from ..store import steps

    sv = handle.sv
    rows = sv.store.now(steps.list_steps, handle.workflow_id)
    return [StepInfo.from_row(sv.codec, r) for r in rows]
