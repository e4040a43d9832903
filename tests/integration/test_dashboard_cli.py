"""Metrics computed from the database (a collector in an app's own registry,
``dbos-celery metrics``), and ``dbos-celery dashboard`` as a person starts
it: the bind rule, the printed token, the host check."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dbos_celery.dashboard import DurableCollector
from dbos_celery.runner import execute
from tests.apps.dashboard import build
from tests.support import Env, wait_for
from tests.web import free_port

CLI = str(Path(sys.executable).parent / "dbos-celery")


@pytest.fixture
def ns(env: Env) -> Iterator[SimpleNamespace]:
    """One workflow of each kind, run in this process: ``queued``, ``done``,
    ``failed``, ``parked`` (parked in recv at once), ``stopped``."""
    built = build(env.vars(), park_after=0.1)
    d = built.durable
    try:
        built.ship.start("o-1", workflow_id="queued")
        for wid, wf, args in (("done", built.ship, ("o-2",)),
                              ("failed", built.fails, ("0000-1", "declined")),
                              ("parked", built.waits, ("go", "parks"))):  # fmt: skip
            wf.start(*args, workflow_id=wid)
            execute(d.services, wid, d.workflows)
        built.ship.start("o-3", workflow_id="stopped")
        d.cancel("stopped")
        d.send("parked", "not this", topic="other")
        d.send("parked", "nor this", topic="another")
        d.send("done", "too late")
        yield built
    finally:
        d.close()


def _cli(env: Env, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DBOS_CELERY_")}
    return subprocess.run([CLI, "--database-url", env.database_url, "--schema", env.schema, *args],
                          env=full, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("dbos_celery_") for f in families)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families
            for s in f.samples}  # fmt: skip


def test_metrics_are_computed_from_the_database(env: Env, ns: SimpleNamespace) -> None:
    statuses = dict(env.sql("SELECT id, status FROM {schema}.workflows"))
    assert statuses == {"queued": "ENQUEUED", "done": "SUCCESS", "failed": "ERROR",
                        "parked": "WAITING", "stopped": "CANCELLED"}  # fmt: skip
    env.sql("UPDATE {schema}.workflows SET updated_at = now() - interval '100 s', "
            "recovery_attempts = 2 WHERE id = 'queued'")  # fmt: skip
    registry = CollectorRegistry()
    registry.register(DurableCollector(ns.durable))  # an app's own registry
    got = _samples(generate_latest(registry).decode())
    want = {
        ("dbos_celery_workflows", (("name", "dash.ship"), ("status", "ENQUEUED"))): 1,
        ("dbos_celery_workflows", (("name", "dash.ship"), ("status", "SUCCESS"))): 1,
        ("dbos_celery_workflows", (("name", "dash.fails"), ("status", "ERROR"))): 1,
        ("dbos_celery_workflows", (("name", "dash.waits"), ("status", "WAITING"))): 1,
        ("dbos_celery_workflows", (("name", "dash.ship"), ("status", "CANCELLED"))): 1,
        ("dbos_celery_workflow_recovery_attempts", (("status", "ENQUEUED"),)): 2,
        ("dbos_celery_parked_workflows", ()): 1,
        ("dbos_celery_messages_waiting", (("destination", "live"),)): 2,
        ("dbos_celery_messages_waiting", (("destination", "finished"),)): 1,
        ("dbos_celery_oldest_workflow_age_seconds", (("status", "PENDING"),)): 0,
        ("dbos_celery_database_up", ()): 1,
    }
    assert {k: got.get(k) for k in want} == want
    workflows = {k: v for k, v in got.items() if k[0] == "dbos_celery_workflows"}
    assert len(workflows) == 5
    assert 100 <= got[("dbos_celery_oldest_workflow_age_seconds", (("status", "ENQUEUED"),))] < 200
    assert got[("dbos_celery_oldest_message_age_seconds", ())] >= 0
    checkpoints = env.sql("SELECT count(*) FROM {schema}.steps")[0][0]  # all within a minute
    assert checkpoints >= 3
    assert got[("dbos_celery_steps_per_second", ())] == pytest.approx(checkpoints / 60)
    assert got[("dbos_celery_live_workers", ())] >= 1  # this process ran them

    printed = _cli(env, "metrics")
    assert printed.returncode == 0, printed.stderr
    again = _samples(printed.stdout)
    assert {k: again.get(k) for k in want} == want


def test_metrics_say_when_the_database_is_down(env: Env) -> None:
    done = subprocess.run(
        [CLI, "--database-url", "postgresql://postgres@127.0.0.1:1/test", "--retry-timeout", "0.2",
         "metrics"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert _samples(done.stdout) == {("dbos_celery_database_up", ()): 0}


def test_the_dashboard_refuses_an_open_bind_without_a_token(env: Env) -> None:
    for host in ("0.0.0.0", "example.com"):  # more hosts: tests/unit/test_dashboard_units.py
        done = _cli(env, "dashboard", "--host", host, "--port", str(free_port()))
        assert done.returncode == 2 and "without a token" in done.stderr, done.stderr
    assert _cli(env, "dashboard", "--port", "0").returncode == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _cli(env, "dashboard", "--port", str(taken.getsockname()[1]))
        assert done.returncode == 1 and "cannot listen" in done.stderr, done.stderr
    helped = _cli(env, "dashboard", "--help")
    assert helped.returncode == 0 and "--read-only" in helped.stdout


def test_the_dashboard_serves_behind_the_token_it_prints(env: Env, ns: SimpleNamespace) -> None:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("DBOS_CELERY_")}
    proc = subprocess.Popen(
        [CLI, "--database-url", env.database_url, "--schema", env.schema, "dashboard",
         "--port", str(port), "--read-only"],
        env=full, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert found and "(read-only)" in line, line
        base, token = found.groups()
        assert base == f"http://127.0.0.1:{port}/" and len(token) >= 24

        def up() -> bool:
            try:
                return httpx.get(base, timeout=1).status_code == 401
            except httpx.TransportError:
                return proc.poll() is not None  # it died: fail below
            except httpx.HTTPError:
                return False

        wait_for(up, 30)
        assert proc.poll() is None
        with httpx.Client(timeout=5, follow_redirects=True) as client:
            got = client.get(f"{base}?token={token}")
            assert got.status_code == 200 and "queued" in got.text and "read-only" in got.text
            assert "/actions/" not in client.get(f"{base}workflows/parked").text
            assert client.get(f"{base}metrics").status_code == 200
            # a page of another site, reached through DNS rebinding, is not answered
            assert client.get(base, headers={"host": f"evil.example:{port}"}).status_code == 400
        assert httpx.get(f"{base}workflows/done", timeout=5).status_code == 401  # no token
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
