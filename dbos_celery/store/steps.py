"""Checkpoints: a workflow's steps, and the records of its durable.calls
(dispatch records and outcomes, written by the worker that ran the task).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    Insert,
    Integer,
    LargeBinary,
    Text,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..keys import CALL_PREFIX, DISPATCH_PREFIX
from .common import (
    ASYNC_COMMIT,
    HELD,
    WID,
    StepRow,
)
from .dialect import (
    age_seconds,
    in_list,
)
from .engine import Executor
from .tables import steps as st

# a checkpoint is written only while its writer holds the lease: a runner
# whose workflow was taken over stops at its next checkpoint
_LEASED = exists(select(literal(1)).where(HELD))


@functools.cache
def insert_statement(n: int) -> Insert:
    """The INSERT of ``n`` checkpoints of one workflow (parameters ``wid2``,
    ``seq0``, ``name0``, ``output0``, ``error0``, ``seq1`` ...), writing
    nothing unless the lease is held (``wid``, ``executor``)."""
    rows = [
        select(
            bindparam("wid2", type_=Text),
            bindparam(f"seq{i}", type_=Integer),
            bindparam(f"name{i}", type_=Text),
            # cast: a UNION of NULLs would be text
            cast(bindparam(f"output{i}", type_=LargeBinary), LargeBinary),
            cast(bindparam(f"error{i}", type_=LargeBinary), LargeBinary),
        ).where(_LEASED)
        for i in range(n)
    ]
    source = rows[0] if n == 1 else union_all(*rows)
    return (
        insert(st)
        .from_select(["workflow_id", "seq", "name", "output", "error"], source)
        .returning(st.c.seq)
    )


def checkpoint_params(workflow_id: str, rows: Sequence[StepRow]) -> dict[str, Any]:
    """The parameters of ``insert_statement(len(rows))``, lease aside."""
    params: dict[str, Any] = {"wid2": workflow_id}
    for i, r in enumerate(rows):
        params.update({f"seq{i}": r.seq, f"name{i}": r.name, f"output{i}": r.output,
                       f"error{i}": r.error})  # fmt: skip
    return params


def insert_steps(ex: Executor, workflow_id: str, rows: Sequence[StepRow], executor_id: str) -> bool:
    """Write checkpoints in one statement; False (nothing written) when
    ``executor_id`` no longer holds the lease. A checkpoint already at one of
    their numbers raises a unique violation."""
    params = {"wid": workflow_id, "executor": executor_id, **checkpoint_params(workflow_id, rows)}
    return len(ex.rows(insert_statement(len(rows)), params)) == len(rows)


_LIST_STEPS = (
    select(st.c.seq, st.c.name, st.c.output, st.c.error)
    .where(st.c.workflow_id == WID)
    .order_by(st.c.seq)
)


def list_steps(ex: Executor, workflow_id: str) -> list[StepRow]:
    return [StepRow(*r) for r in ex.rows(_LIST_STEPS, {"wid": workflow_id})]


# durable.call takes two sequence numbers: the workflow writes the dispatch
# record at seq + 1 (named DISPATCH_PREFIX + task name, holding the Celery
# task id) before it publishes the task; the worker that runs the task marks
# that record with the process running it, then writes the outcome at seq
# (CALL_PREFIX + task name). The task side writes without a lease: only
# where the dispatch record exists, and only once.

_DISPATCHED = st.alias("dispatched")
_DSEQ = bindparam("dseq", type_=Integer)


@dataclass(frozen=True)
class CallRow:
    """A checkpoint of a durable.call, with its age by the database's clock."""

    seq: int
    name: str
    output: bytes | None
    error: bytes | None
    age: float


_CALL_ROWS = (
    select(
        st.c.seq,
        st.c.name,
        st.c.output,
        st.c.error,
        age_seconds(st.c.created_at),
    )
    .where(
        st.c.workflow_id == WID,
        st.c.seq >= bindparam("lo", type_=Integer),
        st.c.seq < bindparam("hi", type_=Integer),
    )
    .order_by(st.c.seq)
)


def call_rows(ex: Executor, workflow_id: str, lo: int, hi: int) -> list[CallRow]:
    """The checkpoints of a workflow at ``lo <= seq < hi`` (outcomes and
    dispatch records of the calls it waits for), one round trip."""
    rows = ex.rows(_CALL_ROWS, {"wid": workflow_id, "lo": lo, "hi": hi})
    return [CallRow(r[0], r[1], r[2], r[3], float(r[4])) for r in rows]


# the start marker may commit asynchronously: lost in a Postgres crash, the
# call looks not started and is re-dispatched after call_redispatch_after
_CALL_STARTED = (
    update(st)
    .where(
        st.c.workflow_id == WID,
        st.c.seq == _DSEQ,
        st.c.name.startswith(DISPATCH_PREFIX, autoescape=True),
        ASYNC_COMMIT.c.x.is_not(None),
    )
    .values(output=bindparam("marker", type_=LargeBinary))
)


def mark_call_started(ex: Executor, workflow_id: str, seq: int, marker: bytes) -> bool:
    """Replace the dispatch record of the call at ``seq`` (kept at seq + 1)
    with ``marker`` (task id and the process running it); False when no such
    record exists (not a call of this database)."""
    return ex.count(_CALL_STARTED, {"wid": workflow_id, "dseq": seq + 1, "marker": marker}) > 0


_CALL_OUTCOME = (
    pg_insert(st)
    .from_select(
        ["workflow_id", "seq", "name", "output", "error"],
        select(
            _DISPATCHED.c.workflow_id,
            _DISPATCHED.c.seq - 1,
            literal(CALL_PREFIX, type_=Text)
            + func.substr(_DISPATCHED.c.name, len(DISPATCH_PREFIX) + 1),
            bindparam("output", type_=LargeBinary),
            bindparam("error", type_=LargeBinary),
        ).where(
            _DISPATCHED.c.workflow_id == WID,
            _DISPATCHED.c.seq == _DSEQ,
            _DISPATCHED.c.name.startswith(DISPATCH_PREFIX, autoescape=True),
        ),
    )
    .on_conflict_do_nothing(index_elements=["workflow_id", "seq"])
    .returning(st.c.seq)
)


def insert_call_outcome(
    ex: Executor, workflow_id: str, seq: int, output: bytes | None, error: bytes | None
) -> bool:
    """Write the outcome of the call at ``seq``, named after its dispatch
    record. False, writing nothing, when the outcome is there already (a
    duplicate run of the task) or no dispatch record exists."""
    params = {"wid": workflow_id, "dseq": seq + 1, "output": output, "error": error}
    return ex.first(_CALL_OUTCOME, params) is not None


_CALL_OUTCOMES = select(st.c.workflow_id, st.c.seq).where(
    in_list(st.c.workflow_id, bindparam("ids", type_=ARRAY(Text))),
    st.c.name.startswith(CALL_PREFIX, autoescape=True),
)


def settled_calls(ex: Executor, calls: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Those of ``calls`` (workflow id, seq) whose outcome is recorded."""
    ids = sorted({w for w, _ in calls})
    return set(calls) & {(r[0], r[1]) for r in ex.rows(_CALL_OUTCOMES, {"ids": ids})}
