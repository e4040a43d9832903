"""The dbos-celery command against a real database, as a script would use it.

Most tests run the command in this process (``cli``: the ``run`` that the
installed script's ``main`` exits with, given the script's environment and
arguments; a process would spend a second and more importing the package);
``script`` runs the installed ``dbos-celery`` itself, for the exit codes and
the output that scripts see."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import redis

from dbos_celery.cli import run
from dbos_celery.runner import execute
from dbos_celery.store import workflows
from dbos_celery.store.migrations import LATEST_VERSION
from tests.apps import manage
from tests.apps.core import build
from tests.support import Env, WorkerProcess

CLI = str(Path(sys.executable).parent / "dbos-celery")


def _script_environ(url: str | None) -> dict[str, str]:
    """This environment with no DBOS_CELERY_* but ``url`` as the database's."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DBOS_CELERY_")}
    if url is not None:
        full["DBOS_CELERY_DATABASE_URL"] = url
    return full


def script(env: Env, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``dbos-celery`` script, run in a process of its own."""
    return subprocess.run(
        [CLI, "--schema", env.schema, *args], env=_script_environ(url), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


@contextlib.contextmanager
def _environ(variables: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def cli(env: Env, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``script``'s command run in this process: ``run`` (what the script's
    ``main`` exits with) in the environment ``script`` gives the script, its
    stdout, stderr and exit code (argparse's exits, for ``--help`` and bad
    usage, included)."""
    argv = ["--schema", env.schema, *args]
    out, err = io.StringIO(), io.StringIO()
    with (
        _environ(_script_environ(url)),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = run(argv)
        except SystemExit as exc:  # argparse: --help, or a usage error
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess([CLI, *argv], code, out.getvalue(), err.getvalue())


def test_migrate_creates_the_schema_and_is_repeatable(env: Env) -> None:
    """It says each migration it applies, then nothing the second time."""
    outputs = []
    for _ in range(2):
        done = cli(env, "migrate", url=env.database_url)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.splitlines())
    latest = env.sql("SELECT max(version) FROM {schema}.schema_version")[0][0]
    assert latest == LATEST_VERSION
    up_to_date = f"schema {env.schema!r} is up to date (version {latest})"
    applied = [f"applied migration {v} of {latest}" for v in range(1, latest + 1)]
    assert outputs == [[*applied, up_to_date], [up_to_date]]


def test_workflow_list_get_and_steps_as_json(env: Env) -> None:
    ns = build(
        env.vars(),
    )
    assert ns.five_steps() == ["step1", "step2", "step3", "step4", "step5"]
    listed = cli(env, "--json", "workflow", "list", url=env.database_url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["core.five_steps"]
    assert rows[0]["status"] == "SUCCESS"
    wid = rows[0]["workflow_id"]

    got = cli(env, "--json", "workflow", "get", wid, url=env.database_url)
    assert json.loads(got.stdout)[0]["workflow_id"] == wid
    steps = json.loads(cli(env, "--json", "workflow", "steps", wid, url=env.database_url).stdout)
    assert [s["output"] for s in steps] == ["step1", "step2", "step3", "step4", "step5"]
    assert [s["seq"] for s in steps] == [0, 1, 2, 3, 4]

    table = cli(env, "workflow", "list", "--status", "SUCCESS", url=env.database_url)
    assert table.returncode == 0
    assert "WORKFLOW_ID" in table.stdout and wid in table.stdout


def test_exit_codes_scripts_rely_on(env: Env) -> None:
    """The installed script's own exit codes (the other tests run the
    command in this process)."""
    assert script(env, "workflow", "get", "nope", url=env.database_url).returncode == 3
    missing_url = script(env, "workflow", "list")
    assert missing_url.returncode == 2
    assert "DBOS_CELERY_DATABASE_URL" in missing_url.stderr
    assert script(env, "workflow", "frobnicate", url=env.database_url).returncode == 2
    unreachable = script(env, "--retry-timeout", "0.5", "workflow", "list",
                         url="postgresql://postgres:s3cret@127.0.0.1:1/test")  # fmt: skip
    assert unreachable.returncode == 4
    assert "s3cret" not in unreachable.stderr


def test_every_verb_has_help(env: Env) -> None:
    for verb in ([], ["migrate"], ["workflow"], ["workflow", "list"], ["workflow", "get"],
                 ["workflow", "steps"], ["workflow", "cancel"], ["workflow", "resume"],
                 ["workflow", "fork"]):  # fmt: skip
        done = cli(env, *verb, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert isinstance(row, dict)
    return row


def _queued_ids(env: Env) -> list[str]:
    """Task ids of the Celery messages waiting in the test's queue."""
    broker = redis.Redis.from_url(env.broker_url)
    try:
        return [json.loads(m)["headers"]["id"] for m in broker.lrange(env.queue, 0, -1)]
    finally:
        broker.close()


def test_workflow_cancel_resume_and_fork_as_json(env: Env) -> None:
    """cancel / resume / fork against a real database; resume and fork with
    no broker leave the row ENQUEUED for the sweep, and say so."""
    ns = manage.build(env.vars())
    try:
        ns.steps.start(3, workflow_id="done-1")
        execute(
            ns.durable.services, "done-1", ns.durable.workflows
        )  # run here: SUCCESS with 3 checkpoints
        ns.steps.start(2, workflow_id="queued-1")
    finally:
        ns.durable.close()
    url = env.database_url

    row = _json(cli(env, "--json", "workflow", "cancel", "queued-1", url=url))
    assert (row["workflow_id"], row["status"], row["cancelled"]) == ("queued-1", "CANCELLED", True)
    again = cli(env, "--json", "workflow", "cancel", "queued-1", url=url)
    assert _json(again)["cancelled"] is False and "nothing to cancel" in again.stderr
    finished = cli(env, "--json", "workflow", "cancel", "done-1", url=url)
    assert (_json(finished)["status"], _json(finished)["cancelled"]) == ("SUCCESS", False)

    queued = _queued_ids(env)
    resumed = cli(env, "--json", "workflow", "resume", "queued-1", url=url)
    row = _json(resumed)
    assert (row["status"], row["enqueued"], row["published"]) == ("ENQUEUED", True, False)
    assert "recovery sweep" in resumed.stderr
    assert _queued_ids(env) == queued  # nothing published without a broker
    not_resumable = cli(env, "workflow", "resume", "done-1", url=url)
    assert not_resumable.returncode == 1 and "Fork it" in not_resumable.stderr

    forked = cli(env, "--json", "workflow", "fork", "done-1", "--from-step", "1",
                 "--new-id", "fork-1", url=url)  # fmt: skip
    row = _json(forked)
    assert (row["workflow_id"], row["name"], row["status"]) == ("fork-1", "mgmt.steps", "ENQUEUED")
    assert row["published"] is False
    steps = json.loads(cli(env, "--json", "workflow", "steps", "fork-1", url=url).stdout)
    assert [(st["seq"], st["output"]) for st in steps] == [(0, "s0")]
    forked_uuid = _json(cli(env, "--json", "workflow", "fork", "done-1", "--from-step", "0",
                            url=url))  # fmt: skip
    assert forked_uuid["workflow_id"] not in ("done-1", "fork-1")

    for args, code in (
        (("workflow", "cancel", "nope"), 3),
        (("workflow", "resume", "nope"), 3),
        (("workflow", "fork", "nope", "--from-step", "0"), 3),
        (("workflow", "fork", "done-1"), 2),  # --from-step is required
        (("workflow", "fork", "done-1", "--from-step", "-1"), 2),
        (("workflow", "fork", "done-1", "--from-step", "0", "--new-id", "done-1"), 2),
    ):
        done = cli(env, *args, url=url)
        assert done.returncode == code, (args, done.stderr)
    assert env.sql("SELECT count(*) FROM {schema}.workflows")[0][0] == 4


def test_resume_from_cli_publishes_to_the_broker_and_a_worker_runs_it(
    env: Env, workers: list[WorkerProcess]
) -> None:
    """A workflow row that was never published (no Celery message at all) is
    cancelled, then resumed from the command line with --broker-url: the
    message it publishes is what a worker runs."""
    ns = manage.build(env.vars())
    try:
        inputs = ns.durable.services.codec.dumps({"args": [2], "kwargs": {}})
        assert ns.durable.services.store.now(
            workflows.insert_workflow, "cli-1", "mgmt.steps", inputs, None
        )
        assert ns.durable.cancel("cli-1")
        assert _queued_ids(env) == []

        done = cli(env, "--json", "workflow", "resume", "cli-1", "--broker-url", env.broker_url,
                   "--queue", env.queue, url=env.database_url)  # fmt: skip
        assert _json(done)["published"] is True
        assert _queued_ids(env) == ["cli-1"]
        w = WorkerProcess(env, "tests.apps.manage", name="w")
        workers.append(w)
        w.wait_ready()
        assert ns.durable.retrieve("cli-1").result(timeout=30) == ["s0", "s1"], w.describe()
        assert env.ledger("cli-1") == ["s0", "s1"]
    finally:
        ns.durable.close()


def test_workflow_list_filters_by_creation_time(env: Env) -> None:
    ns = manage.build(env.vars())
    try:
        for wid in ("jan", "jun", "dec"):
            ns.steps.start(1, workflow_id=wid)
    finally:
        ns.durable.close()
    for wid, at in (("jan", "2024-01-01T00:00Z"), ("jun", "2024-06-01T00:00Z"),
                    ("dec", "2024-12-01T00:00Z")):  # fmt: skip
        env.sql("UPDATE {schema}.workflows SET created_at = %s WHERE id = %s", at, wid)

    def listed(*args: str) -> list[str]:
        done = cli(env, "--json", "workflow", "list", *args, url=env.database_url)
        assert done.returncode == 0, done.stderr
        return [r["workflow_id"] for r in json.loads(done.stdout)]

    assert listed("--created-after", "2024-03-01") == ["jun", "dec"]
    assert listed("--created-before", "2024-06-01T00:00:00Z") == ["jan"]  # exclusive
    assert listed("--created-after", "2024-05-31T23:00:00-02:00",
                  "--created-before", "2024-12-01") == []  # fmt: skip
    assert listed("--created-after", "2024-05-31T21:00:00-02:00",
                  "--created-before", "2024-12-01") == ["jun"]  # fmt: skip
    bad = cli(env, "workflow", "list", "--created-after", "yesterday", url=env.database_url)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
