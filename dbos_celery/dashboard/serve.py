"""``dbos-celery dashboard``: serve the dashboard with uvicorn.

It binds 127.0.0.1 by default. A non-loopback address without a token is
refused. Without ``--token`` (or ``$DBOS_CELERY_DASHBOARD_TOKEN``) a random
one is made and printed in the URL to open, as Jupyter does: every request,
and so every write, needs it. On loopback only loopback host names are
answered (a page of another site cannot reach it by DNS rebinding).
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass

import uvicorn

from .app import create_app
from .security import LOOPBACK_NAMES, is_loopback, new_token


@dataclass(frozen=True)
class Options:
    database_url: str
    schema: str
    host: str
    port: int
    token: str | None
    read_only: bool
    broker_url: str | None
    retry_timeout: float


class Refused(Exception):
    """A bind that would expose the dashboard unprotected."""


def check_bind(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise Refused(
            f"refusing to serve on {host!r} without a token: anyone who can reach it could "
            "read your workflows' data and act on them. Pass --token (or set "
            "DBOS_CELERY_DASHBOARD_TOKEN), or bind 127.0.0.1."
        )


def url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


def listen(host: str, port: int) -> socket.socket:
    """The listening socket (so that the URL is printed once it answers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(o: Options) -> int:
    """Run until interrupted; the exit code."""
    check_bind(o.host, o.token)
    sock = listen(o.host, o.port)
    token = o.token or new_token()
    loopback = is_loopback(o.host)
    app = create_app(
        o.database_url, token=token, read_only=o.read_only, schema=o.schema,
        broker_url=o.broker_url, database_retry_timeout=o.retry_timeout,
        allowed_hosts=LOOPBACK_NAMES if loopback else None,
    )  # fmt: skip
    where = url(o.host, o.port)
    mode = " (read-only)" if o.read_only else ""
    if o.token is None:
        print(f"dbos-celery dashboard{mode}: open {where}?token={token}", file=sys.stderr)
    else:
        print(f"dbos-celery dashboard{mode}: open {where} (log in with your token)",
              file=sys.stderr)  # fmt: skip
    if o.broker_url is None and not o.read_only:
        print("dbos-celery dashboard: no --broker-url: resumed, forked and woken workflows are "
              "published by a worker's recovery sweep (after enqueued_timeout)",
              file=sys.stderr)  # fmt: skip
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
