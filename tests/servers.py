"""Private, throwaway Postgres and Redis servers started from the installed
binaries, each on a free loopback port with its files in a temporary folder.

The suite's bring-up (:func:`bring_up`, called by tests/conftest.py once per
run, in the pytest process that xdist's workers are started from): for each
service at a ``DBOS_TEST_*`` URL that does not answer, start a private one and
point the variable at it; :meth:`Servers.stop` stops them and removes their
folders at the end of the run. Under CI (``CI`` set) nothing is started: CI
starts the shared servers and a missing one must fail the run.

:class:`PrivatePostgres` is an ``initdb`` cluster (trust auth, listening on
127.0.0.1 only, its unix socket in its folder); when run as root it runs as
the ``postgres`` user, as initdb refuses root. :class:`PrivateRedis` is a
``redis-server`` child process without persistence, which a test may also
stop and start again on the same port (tests/pgcluster.py re-exports it).

    python -m tests.servers   # start both, print their URLs, stop them
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql

from tests.support import SERVICE_DEFAULTS

__all__ = [
    "DISABLE",
    "HOW_TO_GET",
    "PROBLEM",
    "PrivatePostgres",
    "PrivateRedis",
    "ServerUnavailable",
    "Servers",
    "bring_up",
    "pg_bindir",
    "postgres_problem",
    "redis_problem",
    "unused_port",
]

DATABASE = "DBOS_TEST_DATABASE_URL"
REDIS = "DBOS_TEST_REDIS_URL"
BROKER = "DBOS_TEST_BROKER_URL"  # the Celery broker: Redis too, unless set otherwise
DISABLE = "DBOS_TEST_PRIVATE_SERVERS"  # "0": never start private servers
PROBLEM = "DBOS_TEST_PRIVATE_SERVERS_PROBLEM"  # why none could be started
HOW_TO_GET = (
    "install the binaries (Debian/Ubuntu: apt-get install postgresql redis-server) "
    "or run `docker compose up -d postgres redis` (see DEVELOPERS.md)"
)


class ServerUnavailable(RuntimeError):
    """A private server could not be started (no binaries, or it failed)."""


def unused_port() -> int:
    """A loopback port nothing listens on, chosen by the OS."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def postgres_problem(url: str) -> str | None:
    """None when Postgres at ``url`` answers (and lets us in), else why not."""
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no answer'}"
    return None


def redis_problem(url: str) -> str | None:
    """None when Redis at ``url`` answers, else why not."""
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no answer'}"
    finally:
        client.close()
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)


def pg_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: from PATH, else the
    newest Debian (/usr/lib/postgresql/<ver>/bin) or RHEL (/usr/pgsql-<ver>)
    installation."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        candidates += sorted(Path("/").glob(pattern.lstrip("/")), key=_version_key, reverse=True)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    return None


_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def _popen(
    cmd: list[str],
    log: IO[bytes],
    cwd: Path,
    *,
    user: pwd.struct_passwd | None = None,
    death_signal: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server as ``user``, in a session of its own (a Ctrl-C of the
    run reaches pytest, which stops it, not the server). On Linux,
    ``death_signal`` reaches the server if this process dies without stopping
    it (a kill -9 of the run leaves no server running)."""
    preexec = None
    if death_signal is not None and _libc is not None:
        libc, sig = _libc, death_signal

        def preexec() -> None:
            libc.prctl(_PR_SET_PDEATHSIG, sig)

    as_user: dict[str, Any] = {}
    if user is not None:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.Popen(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=preexec, **as_user,
    )  # fmt: skip


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _end(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Send ``sig`` and wait; SIGKILL if it does not exit in ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


class PrivatePostgres:
    """A Postgres cluster of its own: ``initdb`` into a temporary folder,
    trust auth, superuser ``postgres``, listening on 127.0.0.1:``port`` only
    (unix socket in the folder), fsync off; database ``database`` created.
    :meth:`stop` stops it and removes the folder."""

    def __init__(
        self, database: str = "test", port: int | None = None, death_signal: int | None = None
    ) -> None:
        self.database = database
        self.port = port or unused_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        self.death_signal = death_signal
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def _admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> PrivatePostgres:
        bindir = pg_bindir()
        if bindir is None:
            raise ServerUnavailable(f"no Postgres binaries (initdb) found: {HOW_TO_GET}")
        user = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                user = pwd.getpwnam("nobody")
        self.folder = Path(tempfile.mkdtemp(prefix="dbos-celery-pg-"))
        try:
            self._start(bindir, user, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, bindir: Path, user: pwd.struct_passwd | None, timeout: float) -> None:
        assert self.folder is not None
        if user is not None:
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        data, sock, log_path = self.folder / "data", self.folder / "socket", self.folder / "log"
        with open(log_path, "wb") as log:
            initdb = _popen(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"],
                log, self.folder, user=user,
            )  # fmt: skip
            if initdb.wait(timeout) != 0:
                raise ServerUnavailable(f"initdb failed:\n{_tail(log_path)}")
            sock.mkdir()
            if user is not None:
                os.chown(sock, user.pw_uid, user.pw_gid)
            self.proc = _popen(
                [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-k", str(sock), "-c", "listen_addresses=127.0.0.1",
                 "-c", "max_connections=200", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                log, self.folder, user=user, death_signal=self.death_signal,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while postgres_problem(self._admin_url()) is not None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ServerUnavailable(f"Postgres did not start:\n{_tail(log_path)}")
            time.sleep(0.1)
        if self.database != "postgres":
            with psycopg.connect(self._admin_url(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the folder."""
        _end(self.proc, signal.SIGINT, 30)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class PrivateRedis:
    """A redis-server of its own on a free loopback port (never 6379): a
    child process with no persistence, its folder removed when it stops.
    A test may stop it and start it again on the same port."""

    def __init__(self, port: int | None = None, death_signal: int | None = None) -> None:
        self.port = port or unused_port()
        assert self.port != 6379
        self.url = self.url_for(0)
        self.death_signal = death_signal
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        # from_url: no retries with backoff (redis.Redis() retries 10 times)
        self.client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def alive(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable(f"no redis-server found: {HOW_TO_GET}")
        self.folder = Path(tempfile.mkdtemp(prefix="dbos-celery-redis-"))
        log_path = self.folder / "log"
        with open(log_path, "wb") as log:
            self.proc = _popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no",
                 "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                log, self.folder, death_signal=self.death_signal,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.alive():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = _tail(log_path)
                self.stop()
                raise ServerUnavailable(f"redis-server did not start:\n{why}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM (no persistence: nothing is saved), then remove the folder."""
        _end(self.proc, signal.SIGTERM, 10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def subscribers(self, channel: str) -> int:
        return int(dict(self.client.pubsub_numsub(channel)).get(channel.encode(), 0))


@dataclass
class Servers:
    """What :func:`bring_up` started, and what it noticed (for the report)."""

    postgres: PrivatePostgres | None = None
    redis: PrivateRedis | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop what was started and remove its folders (again: a no-op)."""
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()


def bring_up(environ: MutableMapping[str, str] | None = None) -> Servers:
    """For each service at a DBOS_TEST_* URL of ``environ`` (default
    ``os.environ``; defaults: tests.support.SERVICE_DEFAULTS) that does not
    answer, start a private server and point the variable at it; Redis URLs
    keep their database number. Nothing is started with CI set, or with
    DBOS_TEST_PRIVATE_SERVERS=0. When a server cannot be started, the reason
    is left in DBOS_TEST_PRIVATE_SERVERS_PROBLEM (tests that need it skip)."""
    env = os.environ if environ is None else environ
    servers = Servers()
    if env.get("CI") or env.get(DISABLE) == "0":
        return servers
    env.pop(PROBLEM, None)
    problems: list[str] = []
    # SIGQUIT: Postgres's immediate shutdown; its folder stays in /tmp then
    death = {"death_signal": signal.SIGQUIT}
    try:
        url = env.get(DATABASE, SERVICE_DEFAULTS[DATABASE])
        why = postgres_problem(url)
        if why is not None:
            try:
                database = urlsplit(url).path.lstrip("/") or "test"
                servers.postgres = PrivatePostgres(database, **death).start()
                env[DATABASE] = servers.postgres.url
                servers.notes.append(f"{DATABASE}: private Postgres {env[DATABASE]} ({url}: {why})")
            except ServerUnavailable as exc:
                problems.append(f"no private Postgres: {exc}")
        for var in (REDIS, BROKER):
            url = env.get(var, SERVICE_DEFAULTS[var])
            if not url.startswith("redis://"):  # none (""), or another broker
                continue
            why = redis_problem(url)
            if why is None:
                continue
            try:
                if servers.redis is None:
                    servers.redis = PrivateRedis(death_signal=signal.SIGTERM).start()
                db = int(urlsplit(url).path.lstrip("/") or 0)
                env[var] = servers.redis.url_for(db)
                servers.notes.append(f"{var}: private Redis {env[var]} ({url}: {why})")
            except ServerUnavailable as exc:
                problems.append(f"no private Redis for {var}: {exc}")
                break
    except BaseException:
        servers.stop()
        raise
    if problems:
        env[PROBLEM] = "; ".join(problems)
        servers.notes += problems
    return servers


if __name__ == "__main__":
    started = Servers()
    try:
        t0 = time.monotonic()
        started.postgres = PrivatePostgres().start()
        print(f"Postgres {started.postgres.url} in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        started.redis = PrivateRedis().start()
        print(f"Redis {started.redis.url} in {time.monotonic() - t0:.1f} s")
    finally:
        started.stop()
