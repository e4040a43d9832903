"""Every example runs as a program and says what it should; what it printed
is what the database holds.

Each runs against Postgres + Redis (a per-test schema and queue), and with
no servers at all (``embedded``: no URL set, an SQLite file in a fresh
working directory, the in-memory broker and an in-process worker).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Env, WorkerProcess, wait_for

Sql = Callable[..., list[tuple[Any, ...]]]
SETTINGS = ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "SCHEMA", "QUEUE")


PYTHON = sys.executable
CLI = str(Path(sys.executable).with_name("dbos-celery"))  # installed with the package


def run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> str:
    """Run a program to its end; its stdout, once it exited 0."""
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def server_env(env: Env, redis: bool = True) -> dict[str, str]:
    """An example's settings for Postgres + Redis, one test's schema and queue."""
    return {
        **os.environ,
        "DATABASE_URL": env.database_url,
        "REDIS_URL": env.redis_url or "" if redis else "",
        "BROKER_URL": env.broker_url,
        "SCHEMA": env.schema,
        "QUEUE": env.queue,
    }


def embedded_env() -> dict[str, str]:
    """No settings at all: the examples' own defaults."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    clean.pop("DBOS_CELERY_DATABASE_URL", None)
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    return clean


def sqlite_sql(directory: Path) -> Sql:
    """Queries on the one SQLite database an embedded run left in ``directory``."""
    files = [p for p in directory.iterdir() if p.read_bytes()[:16] == b"SQLite format 3\x00"]
    assert len(files) == 1, f"one SQLite database expected in {directory}: {files}"

    def sql(query: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(files[0]) as conn:
            query = query.replace("{schema}.", "").replace("%s", "?")
            return conn.execute(query, params).fetchall()

    return sql


def output(sql: Sql, workflow_id: str) -> Any:
    """A finished workflow's recorded output (JSON)."""
    query = "SELECT status, output FROM {schema}.workflows WHERE id = %s"
    [(status, data)] = sql(query, workflow_id)
    assert status == "SUCCESS"
    return json.loads(bytes(data))


def step_names(sql: Sql, workflow_id: str) -> list[str]:
    rows = sql("SELECT name FROM {schema}.steps WHERE workflow_id = %s ORDER BY seq", workflow_id)
    return [r[0] for r in rows]


# --- what each example must print and record -------------------------------


def check_checkout(out: str, sql: Sql) -> None:
    paid = re.search(r"^(order-\w+): result 'fulfilled', status SUCCESS$", out, re.M)
    assert paid, out
    assert out.count("charging order") == 1, out
    assert f"charging order {paid.group(1)}" in out
    unpaid = re.search(
        r"^(order-\w+): result 'cancelled' after ([\d.]+) s, status SUCCESS$", out, re.M
    )
    assert unpaid, out
    assert float(unpaid.group(2)) >= 2.9  # the 3 s timeout, not earlier
    rows = sql("SELECT id, status FROM {schema}.workflows ORDER BY id")
    assert sorted(rows) == sorted([(paid.group(1), "SUCCESS"), (unpaid.group(1), "SUCCESS")])
    assert output(sql, paid.group(1)) == "fulfilled"
    assert output(sql, unpaid.group(1)) == "cancelled"
    charges = sql("SELECT workflow_id FROM {schema}.steps WHERE name = 'checkout.charge'")
    assert charges == [(paid.group(1),)]
    # the retried webhook was stored once and consumed: nothing is left over
    assert sql("SELECT count(*) FROM {schema}.messages") == [(0,)]
    assert sql("SELECT count(*) FROM {schema}.send_keys") == [(1,)]


def check_saga(out: str, sql: Sql) -> None:
    results = dict(re.findall(r"^(order-\w+): result (\{.*\})$", out, re.M))
    assert len(results) == 2, out
    shipped, failed = results  # in the order the program placed them
    assert output(sql, shipped) == {"status": "shipped", "tracking": f"trk-{shipped}"}
    assert step_names(sql, shipped) == ["saga.reserve", "saga.charge", "saga.ship"]
    assert output(sql, failed) == {
        "status": "compensated",
        "reason": "no carrier delivers to 'nowhere'",
    }
    # compensated in reverse order, each once, after the failed step
    undo = ["saga.refund", "saga.release"]
    assert step_names(sql, failed) == ["saga.reserve", "saga.charge", "saga.ship", *undo]
    [(error,)] = sql(
        "SELECT error FROM {schema}.steps WHERE workflow_id = %s AND name = 'saga.ship'", failed
    )
    assert error is not None
    assert re.findall(rf"\[undo\] {failed}: (\w+)", out) == ["refund", "release"]
    assert "[undo]" not in "".join(line for line in out.splitlines() if shipped in line)
    assert f"{failed}: checkpoints saga.reserve, saga.charge, saga.ship (failed), " in out


def check_fanout(out: str, sql: Sql) -> None:
    best = re.search(r"^(rfq-\w+): best (\w+) at ([\d.]+)$", out, re.M)
    assert best, out
    request, supplier, total = best.group(1), best.group(2), float(best.group(3))
    quoted = {s: float(t) for s, t in re.findall(r"\[task\] (\w+) quotes ([\d.]+) for", out)}
    assert len(quoted) == 5, out
    assert min(quoted, key=quoted.__getitem__) == supplier
    assert output(sql, request) == {"supplier": supplier, "total": total, "quotes": quoted}
    # one checkpointed outcome per task, each task dispatched once
    names = step_names(sql, request)
    assert names.count("durable.call:fanout.quote") == 5, names
    assert names.count("durable.dispatch:fanout.quote") == 5, names


def check_approval(out: str, sql: Sql) -> None:
    waiting = re.search(r"^(expense-\w+): status WAITING \(parked", out, re.M)
    assert waiting, out
    request = waiting.group(1)
    assert re.search(rf"^{request}: result 'approved', status SUCCESS$", out, re.M), out
    assert output(sql, request) == "approved"
    names = step_names(sql, request)
    assert names[0] == "approval.ask" and names[-1] == "approval.pay", names
    assert "durable.recv" in names
    assert out.count("approver asked") == 1 and out.count("paying") == 1, out
    assert sql("SELECT count(*) FROM {schema}.messages") == [(0,)]


CHECKS = {"saga": check_saga, "fanout": check_fanout, "approval": check_approval}


# --- against Postgres + Redis ----------------------------------------------


@pytest.mark.parametrize(
    ("command", "redis"),
    [(["-m", "examples.checkout.app"], True), (["examples/checkout/app.py"], False)],
    ids=["module-redis", "file-polling"],
)
def test_checkout_example_fulfils_paid_order_and_cancels_unpaid_one(
    env: Env, command: list[str], redis: bool
) -> None:
    check_checkout(run([PYTHON, *command], server_env(env, redis)), env.sql)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_on_postgres_and_redis_prints_what_it_recorded(env: Env, name: str) -> None:
    CHECKS[name](run([PYTHON, "-m", f"examples.{name}.app"], server_env(env)), env.sql)


@pytest.mark.slow  # the example itself runs in test_example_runs_with_no_servers
def test_approval_waits_parked_on_a_worker_until_approve_script_decides(
    env: Env, workers: list[WorkerProcess]
) -> None:
    """The README's way: a `celery worker`, a request, `dbos-celery workflow
    get` shows it WAITING, `approve.py <id> reject` ends it."""
    settings = server_env(env)
    worker = WorkerProcess(env, "examples.approval.app", pool="threads", extra_env=settings)
    workers.append(worker)
    worker.wait_ready()
    start = (
        "from examples.approval.app import expense; print(expense.start('desk', 9.5).workflow_id)"
    )
    request = run([PYTHON, "-c", start], settings).strip()

    def status() -> str:
        return str(env.sql("SELECT status FROM {schema}.workflows WHERE id = %s", request)[0][0])

    wait_for(lambda: status() == "WAITING", 20, worker.describe)
    cli = [CLI, "--database-url", env.database_url, "--schema", env.schema, "workflow"]
    shown = run([*cli, "get", request], settings)
    assert re.search(rf"^{request} +approval.expense +WAITING ", shown, re.M), shown
    listed = run([*cli, "list", "--status", "WAITING"], settings)
    assert [line.split()[0] for line in listed.splitlines()[1:]] == [request], listed
    approve = [PYTHON, "examples/approval/approve.py", request]
    assert run([*approve, "reject"], settings) == f"{request}: reject sent\n"
    wait_for(lambda: status() == "SUCCESS", 20, worker.describe)
    assert output(env.sql, request) == "rejected"
    assert "approval.pay" not in step_names(env.sql, request)
    # a second decision is the same idempotency key: stored once, ignored
    run([*approve, "approve"], settings)
    assert env.sql("SELECT count(*) FROM {schema}.send_keys") == [(1,)]


def test_approve_script_refuses_unknown_request_and_bad_decision(env: Env) -> None:
    script = [PYTHON, "examples/approval/approve.py"]
    for args, code, says in [
        (["no-such-request", "approve"], 1, "no request 'no-such-request'"),
        (["some-request", "maybe"], 2, "usage: approve.py"),
    ]:
        proc = subprocess.run(
            [*script, *args], cwd=ROOT, env=server_env(env), capture_output=True, text=True
        )
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert says in proc.stderr


# --- no servers: the embedded defaults -------------------------------------


@pytest.mark.embedded
@pytest.mark.parametrize("name", ["checkout", "saga", "fanout", "approval"])
def test_example_runs_with_no_servers(tmp_path: Path, name: str) -> None:
    out = run([PYTHON, "-m", f"examples.{name}"], embedded_env(), cwd=tmp_path)
    assert "database embedded SQLite" in out
    {"checkout": check_checkout, **CHECKS}[name](out, sqlite_sql(tmp_path))
