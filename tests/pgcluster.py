"""Private servers for tests that stop, restart or flush them.

:class:`PgCluster` is a Postgres cluster of its own (Debian's
``pg_createcluster``) on a free port, trust auth, dropped at teardown: tests
that restart or stop Postgres use it and never touch the shared server.
A private Redis: :class:`PrivateRedis` (from tests/servers.py, which also
holds the suite's own throwaway servers).

    python -m tests.pgcluster   # create, restart and drop one (a smoke check)
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from tests.servers import PrivateRedis
from tests.support import Env, wait_for

__all__ = ["PgCluster", "PrivateRedis", "app_on_cluster", "free_port", "private_cluster"]

ETC = Path("/etc/postgresql")


def free_port(start: int = 5499) -> int:
    """The first port from ``start`` that nothing listens on (nor a cluster
    configured here claims). Each pytest-xdist worker searches its own range,
    so that two of them never pick the same port at once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    start += 50 * int(worker[2:] or 0) if worker.startswith("gw") else 0
    taken = set()
    for conf in ETC.glob("*/*/postgresql.conf"):
        m = re.search(r"^\s*port\s*=\s*(\d+)", conf.read_text(), re.M)
        if m:
            taken.add(int(m.group(1)))
    for port in range(start, start + 500):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port for a private Postgres cluster")


def _run(cmd: list[str], timeout: float) -> None:
    done = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")


class PgCluster:
    """A Postgres cluster of this test run alone: start / stop / restart /
    drop through Debian's pg_ctlcluster (which runs it as user postgres)."""

    def __init__(self, name: str | None = None, port: int | None = None) -> None:
        versions = sorted(p.name for p in ETC.iterdir() if p.is_dir())
        if not versions:
            raise RuntimeError("no Postgres installed under /etc/postgresql")
        self.version = versions[-1]
        self.name = name or f"dbosc_{uuid.uuid4().hex[:8]}"
        self.port = port or free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.created = False

    def _ctl(self, action: str, timeout: float = 60) -> None:
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action],
             timeout)  # fmt: skip

    def create(self) -> PgCluster:
        _run(
            ["pg_createcluster", self.version, self.name, "--port", str(self.port),
             "--start-conf", "manual", "-o", "max_connections=300",
             "--", "--no-sync"],
            120,
        )  # fmt: skip
        self.created = True
        hba = ETC / self.version / self.name / "pg_hba.conf"
        lines = []
        for line in hba.read_text().splitlines():
            parts = line.split()
            if parts and not line.lstrip().startswith("#"):
                line = re.sub(r"\S+$", "trust", line.rstrip())
            lines.append(line)
        hba.write_text("\n".join(lines) + "\n")
        self.start()
        return self

    def alive(self) -> bool:
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        self._ctl("start")
        wait_for(self.alive, 30)

    def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, nothing is lost."""
        self._ctl("stop")
        wait_for(lambda: not self.alive(), 30)

    def crash(self) -> None:
        """Immediate shutdown, as at a power cut: the WAL the server had not
        flushed (asynchronous commits still in its buffers) is lost; the
        next start replays what is on disk."""
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", "--mode", "immediate",
              self.version, self.name, "stop"], 60)  # fmt: skip
        wait_for(lambda: not self.alive(), 30)

    def restart(self) -> None:
        self._ctl("restart")
        wait_for(self.alive, 30)

    def ensure_started(self) -> None:
        if not self.alive():
            self.start()

    def terminate_backends(self) -> int:
        """pg_terminate_backend every client session but this one; how many."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
        return sum(1 for (ok,) in rows if ok)

    def drop(self) -> None:
        if self.created:
            subprocess.run(
                ["pg_dropcluster", "--stop", self.version, self.name],
                timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.created = False


def _can_make_clusters() -> str | None:
    if os.geteuid() != 0:
        return "private Postgres clusters need root (pg_createcluster)"
    if not ETC.is_dir():
        return "no Debian Postgres (/etc/postgresql) to make a private cluster with"
    return None


def private_cluster() -> Iterator[PgCluster]:
    """The body of a (module- or session-scoped) fixture: a private cluster,
    created and started, dropped afterwards. Skipped (failed under CI) where
    clusters cannot be made. Tests may stop it; ``ensure_started`` before use::

        @pytest.fixture(scope="module")
        def pg() -> Iterator[PgCluster]:
            yield from private_cluster()
    """
    why = _can_make_clusters()
    if why is not None:
        if os.environ.get("CI"):
            raise RuntimeError(why)
        pytest.skip(why)
    cluster = PgCluster()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.drop()


def app_on_cluster(
    pg: PgCluster, env: Env, build: Callable[[dict[str, str]], SimpleNamespace], **extra: str
) -> Iterator[SimpleNamespace]:
    """The body of a test's ``ns`` fixture whose library tables live in the
    private cluster ``pg`` (the ledger and gates stay in the shared server,
    ``env``); ``extra``: more variables. The workers the test starts get the
    same variables. Its schema in the cluster is dropped afterwards."""
    pg.ensure_started()
    env.extra.update({"DBOS_TEST_DATABASE_URL": pg.url, **extra})
    built = build(env.vars())
    built.durable.migrate()
    try:
        yield built
    finally:
        built.durable.close()
        pg.ensure_started()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{env.schema}" CASCADE')


if __name__ == "__main__":
    c = PgCluster()
    try:
        t0 = time.monotonic()
        c.create()
        print(f"created {c.name} on port {c.port} in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        c.restart()
        print(f"restarted in {time.monotonic() - t0:.1f} s")
    finally:
        c.drop()
