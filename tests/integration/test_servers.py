"""The suite brings up what it needs: a service at a DBOS_TEST_* URL that
does not answer gets a private throwaway server for the run (tests/servers.py,
started by tests/conftest.py), which is gone when the run ends; under CI a
missing service fails the run instead.

The runs here are pytest runs of their own, of this file's ``probe_*``
function (``-o python_functions=probe_*``; the suite never collects it),
with every service URL pointing at a port nothing listens on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from tests import servers, support
from tests.support import ROOT, Env

PROBE = "DBOS_TEST_SERVERS_PROBE"  # where the probe writes what it saw
# nothing listens there, and the OS never hands it out as a free port
NOWHERE = 1
URLS = ("DBOS_TEST_DATABASE_URL", "DBOS_TEST_REDIS_URL", "DBOS_TEST_BROKER_URL")

CHILD = """
import json
import psycopg, redis
from tests import support
psycopg.connect(support.DATABASE_URL, connect_timeout=3).close()
for url in (support.REDIS_URL, support.BROKER_URL):
    redis.Redis.from_url(url, socket_timeout=3).ping()
print(json.dumps([support.DATABASE_URL, support.REDIS_URL, support.BROKER_URL]))
"""


def probe_private_servers(env: Env) -> None:
    """In the run under test: use the services, as tests and their worker
    subprocesses do, and record which servers answered."""
    with psycopg.connect(env.database_url) as pg:
        [(data_dir,)] = pg.execute("SHOW data_directory").fetchall()
    env.sql("INSERT INTO {schema}.ledger (what) VALUES ('probe')")
    assert env.ledger() == ["probe"]
    client = redis.Redis.from_url(env.redis_url or "", socket_timeout=3)
    broker = redis.Redis.from_url(env.broker_url, socket_timeout=3)
    assert client.ping() and broker.ping()
    child = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, **env.vars(), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    seen = {
        "env": [env.database_url, env.redis_url, env.broker_url],
        "support": [support.DATABASE_URL, support.REDIS_URL, support.BROKER_URL],
        "environ": [os.environ[var] for var in URLS],
        "child": json.loads(child.stdout),
        "data_dir": data_dir,
        "postgres_pid": int((Path(data_dir) / "postmaster.pid").read_text().split()[0]),
        "redis_pid": client.info("server")["process_id"],
        "redis_dir": client.config_get("dir")["dir"],
        "xdist_worker": os.environ.get("PYTEST_XDIST_WORKER"),
    }
    Path(os.environ[PROBE]).write_text(json.dumps(seen))


def _run_probe(
    tmp_path: Path, xdist: str = "0", **settings: str
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """A pytest run of the probe (``-n xdist``), all services at NOWHERE
    (unless ``settings`` say otherwise); its result and what the probe saw."""
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", NOWHERE)) != 0, f"something listens on {NOWHERE}"
    out = tmp_path / "probe.json"
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("PYTEST_")
        and k not in ("CI", "DBOS_TEST_BACKEND", servers.DISABLE, servers.PROBLEM)
    }  # fmt: skip
    env.update({
        "DBOS_TEST_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{NOWHERE}/test",
        "DBOS_TEST_REDIS_URL": f"redis://127.0.0.1:{NOWHERE}/0",
        "DBOS_TEST_BROKER_URL": f"redis://127.0.0.1:{NOWHERE}/1",
        PROBE: str(out),
        **settings,
    })  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", xdist, "-p", "no:cacheprovider",
         "-o", "python_functions=probe_*", __file__],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc, json.loads(out.read_text()) if out.exists() else None


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is no zombie (Linux)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def binaries() -> None:
    if servers.pg_bindir() is None or shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"no Postgres or Redis binaries: {servers.HOW_TO_GET}")
        pytest.skip(f"no Postgres or Redis binaries: {servers.HOW_TO_GET}")


# in the run's own process, and in an xdist worker (the servers are started
# once, by the process that starts the workers, which inherit the URLs)
@pytest.mark.parametrize("xdist", ["0", "1"], ids=["in-process", "xdist"])
def test_missing_services_get_private_servers_for_the_run(
    binaries: None, tmp_path: Path, xdist: str
) -> None:
    proc, seen = _run_probe(tmp_path, xdist)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert "1 passed" in proc.stdout, log  # not skipped
    assert seen is not None, log
    assert (seen["xdist_worker"] is not None) == (xdist != "0")

    database, redis_url, broker = seen["env"]
    # every reader of the URLs got the private servers: the fixtures, the
    # tests.support constants, the environment and a worker subprocess
    assert seen["support"] == seen["environ"] == seen["child"] == seen["env"]
    assert urlsplit(database).port not in (NOWHERE, 5432)
    assert urlsplit(database).path == "/test"
    assert urlsplit(redis_url).port == urlsplit(broker).port
    assert urlsplit(redis_url).port not in (NOWHERE, 6379)
    assert (urlsplit(redis_url).path, urlsplit(broker).path) == ("/0", "/1")  # as configured
    for folder in (seen["data_dir"], seen["redis_dir"]):
        assert Path(folder).is_relative_to(tempfile.gettempdir()), folder
    # the run's header says so, once
    assert proc.stdout.count("services: DBOS_TEST_DATABASE_URL: private Postgres") == 1
    assert proc.stdout.count("services: DBOS_TEST_BROKER_URL: private Redis") == 1

    # and nothing of them is left
    assert not Path(seen["data_dir"]).parent.exists()
    assert not Path(seen["redis_dir"]).exists()
    assert not _running(seen["postgres_pid"])
    assert not _running(seen["redis_pid"])


def test_under_ci_a_missing_service_fails_the_run(tmp_path: Path) -> None:
    proc, seen = _run_probe(tmp_path, CI="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Postgres is not answering" in proc.stdout
    assert "1 error" in proc.stdout and seen is None


def test_answering_services_are_left_alone(services: None) -> None:
    environ = dict(
        zip(URLS, (support.DATABASE_URL, support.REDIS_URL, support.BROKER_URL), strict=True)
    )
    before = dict(environ)
    started = servers.bring_up(environ)
    assert (started.postgres, started.redis, started.notes) == (None, None, [])
    assert environ == before


def test_nothing_is_started_under_ci_or_when_disabled() -> None:
    for switch in ({"CI": "1"}, {servers.DISABLE: "0"}):
        environ = {"DBOS_TEST_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{NOWHERE}/test"}
        environ |= switch
        before = dict(environ)
        started = servers.bring_up(environ)
        assert (started.postgres, started.redis) == (None, None)
        assert environ == before


def test_without_binaries_nothing_is_started_and_the_reason_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(servers, "pg_bindir", lambda: None)
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    environ = {var: f"{scheme}://127.0.0.1:{NOWHERE}/" for var, scheme in zip(
        URLS, ("postgresql", "redis", "redis"), strict=True
    )}  # fmt: skip
    started = servers.bring_up(environ)
    assert (started.postgres, started.redis) == (None, None)
    assert "no Postgres binaries" in environ[servers.PROBLEM]
    assert "no redis-server" in environ[servers.PROBLEM]
    assert "apt-get install postgresql redis-server" in environ[servers.PROBLEM]
    assert [environ[var] for var in URLS] == [
        f"postgresql://127.0.0.1:{NOWHERE}/", f"redis://127.0.0.1:{NOWHERE}/",
        f"redis://127.0.0.1:{NOWHERE}/",
    ]  # fmt: skip
