"""``manage.py dbos_celery VERB ...``: the ``dbos-celery`` command on the
project's database and schema (``migrate``, ``workflow list``, ``workflow
get ID``, ``workflow cancel ID``...; ``manage.py dbos_celery --help``)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from ..... import cli
from .....errors import ConfigurationError
from ...database import database_url
from ...project import get_durable


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run a dbos-celery verb (migrate, workflow list|get|steps|cancel|resume|fork|gc) on the "
        "database and schema of the project's Durable"
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default="default", help="Django database alias")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("verb", nargs=argparse.REMAINDER, metavar="VERB ...",
                            help="as for the dbos-celery command")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        try:
            schema = get_durable(alias).services.settings.schema
            argv = ["--database-url", database_url(alias), "--schema", schema]
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from exc
        argv += ["--json"] if options["json"] else []
        code = cli.run([*argv, *(options["verb"] or ["--help"])])
        if code:
            raise CommandError(f"dbos-celery exited with status {code}", returncode=code)
