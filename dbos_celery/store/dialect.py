"""The SQL functions that differ between Postgres and SQLite.

Time on SQLite is stored as epoch seconds (REAL); the functions below render
``now()``, intervals and the like for each backend, so that every statement
of the store is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import DateTime, Text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Boolean, Float

_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class now(FunctionElement[Any]):
    """The transaction's time (Postgres ``now()``; SQLite: epoch seconds)."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "now"


class seconds(FunctionElement[Any]):
    """An interval of ``seconds(x)`` seconds, to add to or subtract from a time."""

    inherit_cache = True
    name = "seconds"


class from_epoch(FunctionElement[Any]):
    """A time from epoch seconds (Postgres ``to_timestamp``)."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "from_epoch"


class age_seconds(FunctionElement[Any]):
    """Seconds from a time to now, as a float."""

    type = Float()
    inherit_cache = True
    name = "age_seconds"


class least(FunctionElement[Any]):
    """The smaller of two values, ignoring NULLs (Postgres ``least``)."""

    inherit_cache = True
    name = "least"


class pow2(FunctionElement[Any]):
    """2 to an integer power up to 62."""

    inherit_cache = True
    name = "pow2"


class middle_field(FunctionElement[Any]):
    """The second ``sep``-separated field of a text (Postgres ``split_part(x, sep, 2)``)."""

    type = Text()
    inherit_cache = True
    name = "middle_field"


class in_list(FunctionElement[Any]):
    """``column`` is one of the list bound to ``param`` (a JSON array on SQLite)."""

    type = Boolean()
    inherit_cache = True
    name = "in_list"


class try_lock(FunctionElement[Any]):
    """Take a transaction-scoped lock named by a text, or report it is taken.
    SQLite needs none: its writers are serialized by the file lock."""

    type = Boolean()
    inherit_cache = True
    name = "try_lock"


class async_commit(FunctionElement[Any]):
    """Let this transaction commit without waiting for the WAL flush
    (Postgres); a no-op value on SQLite, which always syncs."""

    type = Text()
    inherit_cache = True
    name = "async_commit"


class short_idle(FunctionElement[Any]):
    """For the rest of this transaction, Postgres ends the session when it
    sits idle for over ``x`` (a text: '2s'): for a transaction holding what
    others need (the sweep's lock); a no-op value on SQLite."""

    type = Text()
    inherit_cache = True
    name = "short_idle"


def _args(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(a, **kw) for a in element.clauses]


def _render(pg: Callable[..., str], lite: Callable[..., str], cls: type) -> None:
    @compiles(cls)
    def _pg(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
        return pg(*_args(element, compiler, **kw))

    @compiles(cls, "sqlite")
    def _lite(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
        return lite(*_args(element, compiler, **kw))


_render(lambda: "now()", lambda: _SQLITE_NOW, now)
_render(lambda x: f"make_interval(0, 0, 0, 0, 0, 0, {x})", lambda x: f"({x})", seconds)
_render(lambda x: f"to_timestamp({x})", lambda x: f"({x})", from_epoch)
_render(lambda t: f"extract(epoch from now() - {t})", lambda t: f"({_SQLITE_NOW} - {t})",
        age_seconds)  # fmt: skip
_render(lambda a, b: f"least({a}, {b})", lambda a, b: f"coalesce(min({a}, {b}), {a}, {b})", least)
_render(lambda n: f"power(2, {n})", lambda n: f"(1 << {n})", pow2)
_render(
    lambda x, sep: f"split_part({x}, {sep}, 2)",
    lambda x, sep: (
        f"substr(substr({x}, instr({x}, {sep}) + 1), 1, "
        f"instr(substr({x}, instr({x}, {sep}) + 1), {sep}) - 1)"
    ),
    middle_field,
)
_render(lambda c, p: f"{c} = ANY({p})", lambda c, p: f"{c} IN (SELECT value FROM json_each({p}))",
        in_list)  # fmt: skip
_render(lambda x: f"pg_try_advisory_xact_lock(hashtext({x}))", lambda x: "1", try_lock)
_render(lambda: "set_config('synchronous_commit', 'off', true)", lambda: "'off'", async_commit)
_render(lambda x: f"set_config('idle_in_transaction_session_timeout', {x}, true)", lambda x: x,
        short_idle)  # fmt: skip
