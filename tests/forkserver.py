"""Start ``celery worker`` processes without paying for their imports each time.

A worker's start-up is mostly importing Celery, kombu, SQLAlchemy, psycopg
and the package (about 1 s of CPU, on a 2-core machine running three tests
at a time); the acceptance tests start some 170 workers. So each test
process keeps one fork server: a process (``python -m tests.forkserver``,
started like a worker: same interpreter, flags, working folder and
``PYTHONPATH``) that imports those modules once and then, per worker,
forks a child that becomes the worker exactly as ``python -m celery`` would:
a session (process group) of its own, stdin from /dev/null, stdout and
stderr to the worker's log, no other file descriptor, the worker's whole
environment, ``sys.argv`` as the command line, then Celery's own entry point
(``celery.__main__.main``) and a normal interpreter exit. Nothing of the
package runs at import time (the house rule), and Celery reads its
environment when the app is made, so the imported modules are what the
worker would have imported itself. The one difference is the hash seed,
shared by the workers of one test process.

A worker is started the old way (``subprocess.Popen``) when its environment
changes an interpreter start-up variable (``PYTHON*``), for a pool that
patches modules at start-up (gevent, eventlet), when the fork server is not
there, and for the whole run with ``DBOS_TEST_FORK_WORKERS=0``.

The protocol: one JSON object a line on the server's stdin, one answer a
line on its stdout. ``{"start": argv, "env": {...}, "cwd": path, "log":
path}`` answers ``{"pid": n}``; ``{"poll": pid}`` answers ``{"returncode":
n or null}`` (the server reaps its children at each request).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
FORKABLE_POOLS = {"prefork", "threads", "solo"}

# what a worker imports anyway, before it reads its app
PRELOAD = (
    "celery.__main__",
    "celery.bin.celery",
    "celery.bin.worker",
    "celery.apps.worker",
    "celery.worker.consumer",
    "celery.concurrency.prefork",
    "celery.concurrency.thread",
    "kombu.transport.redis",
    "dbos_celery",
)


# --- the server -----------------------------------------------------------------


def _become_worker(job: dict[str, Any]) -> None:
    """In the forked child: set the process up as Popen would, then run Celery."""
    os.setsid()
    os.chdir(job["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.environ.clear()
    os.environ.update(job["env"])
    import celery.__main__

    sys.argv = [celery.__main__.__file__, *job["start"]]
    celery.__main__.main()  # raises SystemExit: the interpreter exits as usual


def _serve(requests: IO[str], answers: IO[str]) -> dict[str, Any] | None:
    """Answer requests until stdin closes (None), or, in a forked child,
    return its job."""
    ended: dict[int, int] = {}
    for line in requests:
        while True:  # reap whatever ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended[pid] = os.waitstatus_to_exitcode(status)
        request = json.loads(line)
        if "start" in request:
            pid = os.fork()
            if pid == 0:
                return dict(request)
            answer: dict[str, Any] = {"pid": pid}
        else:
            answer = {"returncode": ended.get(request["poll"])}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return None


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    # the requests and answers on descriptors of their own; 0 and 1 stay
    # free for the children to be pointed at /dev/null and their logs
    requests = os.fdopen(os.dup(0), "r")
    answers = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    job = _serve(requests, answers)
    requests.close()
    answers.close()  # a forked child's: nothing is buffered in it
    if job is not None:
        _become_worker(job)


# --- the client, in the test process ----------------------------------------------


class ForkedProcess:
    """What a test uses of ``subprocess.Popen``, for a forked worker."""

    def __init__(self, server: _Server, pid: int, args: list[str]) -> None:
        self._server = server
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped: the pid is still this process's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)


class _Server:
    def __init__(self) -> None:
        env = server_environ()
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lock = threading.Lock()

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise BrokenPipeError("the fork server ended")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def returncode(self, pid: int) -> int | None:
        code: int | None = self.ask({"poll": pid})["returncode"]
        return code

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def server_environ() -> dict[str, str]:
    """The environment a worker gets from this process (tests/support.py)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


_server: _Server | None = None
_server_lock = threading.Lock()


def _get_server() -> _Server | None:
    global _server
    if os.environ.get("DBOS_TEST_FORK_WORKERS", "1") == "0":
        return None
    with _server_lock:
        if _server is None or _server.proc.poll() is not None:
            _server = _Server()
            atexit.register(_server.close)
        return _server


def _pool(argv: list[str]) -> str:
    return argv[argv.index("-P") + 1] if "-P" in argv else "prefork"


def start(argv: list[str], env: dict[str, str], log_path: Path, log: IO[bytes]) -> Any:
    """The worker ``python -m celery *argv``: forked by this process's fork
    server when it can be, else a ``subprocess.Popen`` writing to ``log``."""
    server = _get_server() if _pool(argv) in FORKABLE_POOLS else None
    if server is not None:
        changed = {k for k in env.keys() | server.env.keys() if env.get(k) != server.env.get(k)}
        if not any(k.startswith("PYTHON") for k in changed):
            job = {"start": argv, "env": env, "cwd": str(ROOT), "log": str(log_path)}
            try:
                pid = server.ask(job)["pid"]
            except (BrokenPipeError, OSError, ValueError):
                pass  # the server is gone: the old way
            else:
                return ForkedProcess(server, pid, [sys.executable, "-m", "celery", *argv])
    return subprocess.Popen(
        [sys.executable, "-m", "celery", *argv], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
