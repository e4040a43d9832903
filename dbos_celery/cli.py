"""The ``dbos-celery`` command: migrations, workflow inspection and management,
the web dashboard and its metrics.

Exit codes scripts can rely on: 0 success (also a cancel of a workflow that
had ended already, a no-op), 1 any other error (e.g. resuming a finished
workflow), 2 bad usage, 3 no such workflow, 4 database unavailable.

``workflow resume`` and ``workflow fork`` publish the workflow's Celery
message by task name (the command has no app of yours) to ``--broker-url``
(default ``$DBOS_CELERY_BROKER_URL``), on ``--queue`` if given, else Celery's
default queue. Without a broker (or if publishing fails) the row is left
ENQUEUED and a worker's recovery sweep publishes it after
``enqueued_timeout``, routed by your app.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from celery import Celery

from . import management, retention
from .durable import Durable
from .errors import (
    DatabaseUnavailableError,
    DurableError,
    InvalidArgumentError,
    NonExistentWorkflowError,
)
from .store.migrations import LATEST_VERSION
from .workflow import WorkflowHandle

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DB = 0, 1, 2, 3, 4


def _iso(value: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset, UTC."""
    try:
        got = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or date-time: {value!r}") from None
    return got if got.tzinfo is not None else got.replace(tzinfo=timezone.utc)


def _natural(what: str) -> Callable[[str], int]:
    """An argument type: an int >= 0, refused as ``what``."""

    def parse(value: str) -> int:
        try:
            got = int(value)
        except ValueError:
            got = -1
        if got < 0:
            raise argparse.ArgumentTypeError(f"{what} >= 0 expected, got {value!r}")
        return got

    return parse


_step, _count = _natural("a step number"), _natural("a count")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> float:
    """A duration: ``90s``, ``15m``, ``12h``, ``7d``, or plain seconds."""
    text = value.strip().lower()
    scale = _UNITS.get(text[-1:], 0)
    try:
        got = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        got = -1.0
    if not got >= 0 or got == float("inf"):
        raise argparse.ArgumentTypeError(
            f"a duration like 90s, 15m, 12h or 7d expected, got {value!r}"
        )
    return got


def _publishing(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker-url",
        default=os.environ.get("DBOS_CELERY_BROKER_URL"),
        help="Celery broker to publish the workflow's message to (default: "
        "$DBOS_CELERY_BROKER_URL; none: the recovery sweep publishes it later)",
    )
    p.add_argument(
        "--queue",
        help="queue to publish to (default: the queue the workflow was started on, else "
        "Celery's default queue)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dbos-celery",
        description="Manage dbos_celery workflows stored in Postgres.",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("DBOS_CELERY_DATABASE_URL"),
        help="Postgres URL (default: $DBOS_CELERY_DATABASE_URL)",
    )
    p.add_argument("--schema", default=os.environ.get("DBOS_CELERY_SCHEMA", "dbos_celery"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--retry-timeout",
        type=float,
        default=3.0,
        help="seconds to retry an unreachable database before exit code 4",
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("migrate", help="create or upgrade the schema")
    _dashboard_verbs(verbs)
    _workflow_verbs(
        verbs.add_parser("workflow", help="inspect and manage workflows").add_subparsers(
            dest="action", required=True
        )
    )
    return p


def _port(value: str) -> int:
    got = _count(value)
    if not 0 < got < 65536:
        raise argparse.ArgumentTypeError(f"a TCP port expected, got {value!r}")
    return got


def _dashboard_verbs(verbs: Any) -> None:
    """``dashboard`` and ``metrics`` (the ``dashboard`` extra)."""
    d = verbs.add_parser(
        "dashboard",
        help="serve the web dashboard (pip install 'dbos-celery[dashboard]')",
        description="Serve the web dashboard: workflows, their steps, messages and events, "
        "actions, and /metrics. Without --token a random token is made and printed in the "
        "URL to open; a non-loopback --host without a token is refused.",
    )
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    d.add_argument("--port", type=_port, default=8765, help="port (default 8765)")
    d.add_argument(
        "--token",
        default=os.environ.get("DBOS_CELERY_DASHBOARD_TOKEN"),
        help="the token every request needs (default: $DBOS_CELERY_DASHBOARD_TOKEN, else a "
        "random one, printed)",
    )
    d.add_argument("--read-only", action="store_true", help="no actions (send, cancel, ...)")
    d.add_argument(
        "--broker-url",
        default=os.environ.get("DBOS_CELERY_BROKER_URL"),
        help="Celery broker to publish resumed, forked and woken workflows to (default: "
        "$DBOS_CELERY_BROKER_URL; none: a worker's recovery sweep publishes them later)",
    )
    verbs.add_parser(
        "metrics",
        help="print the dbos_celery_* Prometheus metrics once (the dashboard extra)",
    )


def _serve_dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard.serve import Options, Refused, serve
    except ImportError as exc:
        _note(f"the dashboard needs its extra: pip install 'dbos-celery[dashboard]' ({exc})")
        return EXIT_ERROR
    options = Options(
        args.database_url, args.schema, args.host, args.port, args.token or None,
        args.read_only, args.broker_url or None, args.retry_timeout,
    )  # fmt: skip
    try:
        return serve(options)
    except Refused as exc:
        _note(str(exc))
        return EXIT_USAGE
    except OSError as exc:  # the port is taken, the address is not ours
        _note(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return EXIT_ERROR


def _print_metrics(durable: Durable) -> int:
    try:
        from .dashboard.metrics import exposition
    except ImportError as exc:
        _note(f"metrics need the dashboard extra: pip install 'dbos-celery[dashboard]' ({exc})")
        return EXIT_ERROR
    text = exposition(durable)
    sys.stdout.write(text.decode())
    if b"\ndbos_celery_database_up 0.0" in text:
        _note("the database did not answer (dbos_celery_database_up 0)")
        return EXIT_DB
    return EXIT_OK


def _workflow_verbs(wf: Any) -> None:
    """The actions of ``dbos-celery workflow``."""
    ls = wf.add_parser("list", help="list workflows, oldest first")
    ls.add_argument("--status")
    ls.add_argument("--name")
    ls.add_argument("--parent")
    ls.add_argument(
        "--created-after",
        type=_iso,
        metavar="ISO",
        help="created at or after this ISO 8601 time (UTC without an offset)",
    )
    ls.add_argument("--created-before", type=_iso, metavar="ISO",
                    help="created before this ISO 8601 time (UTC without an offset)")  # fmt: skip
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--newest-first", action="store_true")
    for verb, text in (("get", "show one workflow"), ("steps", "list a workflow's steps")):
        wf.add_parser(verb, help=text).add_argument("workflow_id")
    wf.add_parser(
        "cancel",
        help="cancel a workflow: an enqueued one never runs, a running one stops at its "
        "next step or wait; a finished one is left as it is",
    ).add_argument("workflow_id")
    resume = wf.add_parser(
        "resume",
        help="run a CANCELLED or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow again from its "
        "checkpoints",
    )
    resume.add_argument("workflow_id")
    _publishing(resume)
    fork = wf.add_parser(
        "fork",
        help="start a copy of a workflow (same name and inputs) that keeps the checkpoints "
        "before --from-step and runs the rest again",
    )
    fork.add_argument("workflow_id")
    fork.add_argument(
        "--from-step",
        type=_step,
        required=True,
        metavar="SEQ",
        help="first step to run again (its seq, as `workflow steps` lists it)",
    )
    fork.add_argument("--new-id", help="id of the new workflow (default: a UUID)")  # fmt: skip
    _publishing(fork)
    gc = wf.add_parser(
        "gc",
        help="delete finished workflows (SUCCESS, ERROR, CANCELLED, "
        "MAX_RECOVERY_ATTEMPTS_EXCEEDED) last updated before a cutoff, with all their rows",
    )
    gc.add_argument("--older-than", type=_duration, required=True, metavar="AGE",
                    help="how old: 90s, 15m, 12h, 7d (or seconds)")  # fmt: skip
    gc.add_argument("--keep", type=_count, metavar="N",
                    help="keep the N most recently finished whatever their age")  # fmt: skip
    gc.add_argument("--dry-run", action="store_true", help="count, delete nothing")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(_plain(r[c]) if r[c] is not None else "") for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows], indent=2))
    else:
        print(_table(rows, columns))


WORKFLOW_COLUMNS = ("workflow_id", "name", "status", "created_at", "recovery_attempts", "error")


def _note(text: str) -> None:
    print(f"dbos-celery: {text}", file=sys.stderr)


class _Publisher:
    """Publishes a workflow's Celery message by task name, if given a broker."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url: str | None = args.broker_url or None
        self.queue: str | None = args.queue
        self.app: Celery | None = None
        self.published = False

    def __call__(self, workflow_id: str, name: str, queue: str | None) -> None:
        if self.url is None:
            return
        self.app = Celery("dbos-celery-cli", broker=self.url)
        queue = self.queue or queue  # --queue, else the queue it runs on
        options: dict[str, Any] = {"queue": queue} if queue else {}
        try:
            self.app.send_task(
                name, (workflow_id,), task_id=workflow_id, retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                **options,
            )  # fmt: skip
        except Exception as exc:  # the row is committed: the sweep publishes it
            _note(f"publishing to the broker failed ({type(exc).__name__}: {exc})")
            return
        self.published = True

    def close(self) -> None:
        if self.app is not None:
            self.app.close()


def _enqueued(
    args: argparse.Namespace, handle: WorkflowHandle[Any], enqueued: bool, pub: _Publisher
) -> None:
    """Print the workflow after a resume or fork, and how it will run."""
    wid = handle.workflow_id
    if enqueued and not pub.published:
        _note(f"workflow {wid} is ENQUEUED but was not published (no --broker-url or "
              "DBOS_CELERY_BROKER_URL, or the broker failed): a worker's recovery sweep "
              "publishes it after enqueued_timeout (30 s by default)")  # fmt: skip
    row = {**asdict(handle.status()), "enqueued": enqueued, "published": pub.published}
    _emit(args, [row], (*WORKFLOW_COLUMNS, "enqueued", "published"))


# the exit code of an error: the first kind it is
_EXIT_CODES: tuple[tuple[type[DurableError], int], ...] = (
    (NonExistentWorkflowError, EXIT_NOT_FOUND),
    (InvalidArgumentError, EXIT_USAGE),
    (DatabaseUnavailableError, EXIT_DB),
    (DurableError, EXIT_ERROR),
)


def _resume_or_fork(args: argparse.Namespace, durable: Durable) -> None:
    """Enqueue the run (publishing it when given a broker) and print it."""
    pub = _Publisher(args)
    try:
        if args.action == "resume":
            handle, enqueued = management.resume(durable.services, args.workflow_id, pub)
            if not enqueued:
                _note(f"workflow {args.workflow_id} is live already; nothing to resume")
        else:
            handle, enqueued = management.fork(
                durable.services, args.workflow_id, args.from_step, args.new_id, pub
            )
            if not enqueued:
                _note(f"workflow {handle.workflow_id} exists already; not forked again")
        _enqueued(args, handle, enqueued, pub)
    finally:
        pub.close()


def _collect(args: argparse.Namespace, durable: Durable) -> None:
    """``workflow gc``: delete (or count) and print how many, with a running
    count on a terminal."""
    live = sys.stderr.isatty() and not args.json

    def progress(total: int) -> None:
        if live:
            print(f"\rdeleted {total} workflows...", end="", file=sys.stderr, flush=True)

    got = retention.garbage_collect(durable.services, args.older_than, args.keep,
                                    dry_run=args.dry_run, progress=progress)  # fmt: skip
    if live:
        print(file=sys.stderr)
    row = {"deleted": 0 if args.dry_run else got, "would_delete": got if args.dry_run else None,
           "older_than_seconds": args.older_than, "keep": args.keep}  # fmt: skip
    if args.json:
        print(json.dumps(row))
    elif args.dry_run:
        print(f"would delete {got} finished workflows (dry run: nothing deleted)")
    else:
        print(f"deleted {got} finished workflows")


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.database_url:
        print("dbos-celery: no database: pass --database-url or set "
              "DBOS_CELERY_DATABASE_URL", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if args.verb == "dashboard":
        return _serve_dashboard(args)
    durable = Durable(
        Celery("dbos-celery-cli"),
        args.database_url,
        schema=args.schema,
        database_retry_timeout=args.retry_timeout,
    )
    try:
        if args.verb == "migrate":
            for version in durable.migrate():
                print(f"applied migration {version} of {LATEST_VERSION}")
            print(f"schema {args.schema!r} is up to date (version {LATEST_VERSION})")
        elif args.verb == "metrics":
            return _print_metrics(durable)
        elif args.action == "list":
            found = durable.list_workflows(
                status=args.status, name=args.name, parent=args.parent, limit=args.limit,
                offset=args.offset, newest_first=args.newest_first,
                created_after=args.created_after, created_before=args.created_before,
            )  # fmt: skip
            _emit(args, [asdict(s) for s in found], WORKFLOW_COLUMNS)
        elif args.action == "get":
            status = durable.retrieve(args.workflow_id).status()
            _emit(args, [asdict(status)], WORKFLOW_COLUMNS)
        elif args.action == "steps":
            steps = durable.list_steps(args.workflow_id)
            _emit(args, [asdict(s) for s in steps], ("seq", "name", "output", "error"))
        elif args.action == "cancel":
            cancelled = durable.cancel(args.workflow_id)
            status = durable.retrieve(args.workflow_id).status()
            if not cancelled:
                _note(f"workflow {args.workflow_id} had ended already ({status.status}); "
                      "nothing to cancel")  # fmt: skip
            _emit(args, [{**asdict(status), "cancelled": cancelled}],
                  (*WORKFLOW_COLUMNS, "cancelled"))  # fmt: skip
        elif args.action in ("resume", "fork"):
            _resume_or_fork(args, durable)
        elif args.action == "gc":
            _collect(args, durable)
        return EXIT_OK
    except DurableError as exc:
        print(f"dbos-celery: {exc}", file=sys.stderr)
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
    finally:
        durable.close()


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
