"""The ``dbos-celery`` command: migrations and workflow inspection.

Exit codes scripts can rely on: 0 success, 1 any other error, 2 bad usage,
3 no such workflow, 4 database unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from celery import Celery

from .durable import Durable
from .errors import DatabaseUnavailableError, DurableError, NonExistentWorkflowError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DB = 0, 1, 2, 3, 4


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
    wf = verbs.add_parser("workflow", help="inspect workflows").add_subparsers(
        dest="action", required=True
    )
    ls = wf.add_parser("list", help="list workflows, oldest first")
    ls.add_argument("--status")
    ls.add_argument("--name")
    ls.add_argument("--parent")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--newest-first", action="store_true")
    for verb, text in (("get", "show one workflow"), ("steps", "list a workflow's steps")):
        wf.add_parser(verb, help=text).add_argument("workflow_id")
    return p


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


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.database_url:
        print("dbos-celery: no database: pass --database-url or set "
              "DBOS_CELERY_DATABASE_URL", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    durable = Durable(
        Celery("dbos-celery-cli"),
        args.database_url,
        schema=args.schema,
        database_retry_timeout=args.retry_timeout,
    )
    try:
        if args.verb == "migrate":
            durable.migrate()
            print(f"schema {args.schema!r} is up to date")
        elif args.action == "list":
            found = durable.list_workflows(
                status=args.status, name=args.name, parent=args.parent, limit=args.limit,
                offset=args.offset, newest_first=args.newest_first,
            )  # fmt: skip
            _emit(args, [asdict(s) for s in found], WORKFLOW_COLUMNS)
        elif args.action == "get":
            status = durable.retrieve(args.workflow_id).status()
            _emit(args, [asdict(status)], WORKFLOW_COLUMNS)
        elif args.action == "steps":
            steps = durable.list_steps(args.workflow_id)
            _emit(args, [asdict(s) for s in steps], ("seq", "name", "output", "error"))
        return EXIT_OK
    except NonExistentWorkflowError as exc:
        print(f"dbos-celery: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except DatabaseUnavailableError as exc:
        print(f"dbos-celery: {exc}", file=sys.stderr)
        return EXIT_DB
    except DurableError as exc:
        print(f"dbos-celery: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        durable.close()


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
