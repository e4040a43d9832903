"""The dbos-celery command against a real database, as a script would use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.apps.core import build
from tests.support import Env

CLI = str(Path(sys.executable).parent / "dbos-celery")


def cli(env: Env, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "DBOS_CELERY_DATABASE_URL"}
    if url is not None:
        full["DBOS_CELERY_DATABASE_URL"] = url
    return subprocess.run(
        [CLI, "--schema", env.schema, *args], env=full, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_migrate_creates_the_schema_and_is_repeatable(env: Env) -> None:
    for _ in range(2):
        done = cli(env, "migrate", url=env.database_url)
        assert done.returncode == 0, done.stderr
    assert env.sql("SELECT max(version) FROM {schema}.schema_version")[0][0] >= 1


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
    assert cli(env, "workflow", "get", "nope", url=env.database_url).returncode == 3
    missing_url = cli(env, "workflow", "list")
    assert missing_url.returncode == 2
    assert "DBOS_CELERY_DATABASE_URL" in missing_url.stderr
    assert cli(env, "workflow", "frobnicate", url=env.database_url).returncode == 2
    unreachable = cli(env, "workflow", "list", url="postgresql://postgres:s3cret@127.0.0.1:1/test")
    assert unreachable.returncode == 4
    assert "s3cret" not in unreachable.stderr


def test_every_verb_has_help(env: Env) -> None:
    for verb in ([], ["migrate"], ["workflow"], ["workflow", "list"], ["workflow", "get"],
                 ["workflow", "steps"]):  # fmt: skip
        done = cli(env, *verb, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout
