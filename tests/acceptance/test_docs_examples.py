"""Every page of the documentation runs as written: README.md and docs/*.md.

Each page with code to run is run by ``tests/docblocks.py`` in a process of
its own and a fresh folder (see its docstring for the markers): its files
written, its Python blocks run in order in one session (an in-process
worker serving each Durable they make), its shell commands run, a real
``celery worker`` started where the page starts one (with a Redis of the
page's own as Celery's broker), and what the page says a command prints
compared with what it printed. A page fails at the first block that does
not do what the page says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests import docblocks
from tests.servers import PrivateRedis, ServerUnavailable
from tests.support import ROOT


def _runnable(page: Path) -> bool:
    try:
        return docblocks.runs_anything(docblocks.parse(page))
    except docblocks.DocError:
        return True  # malformed: its test says why


RUNNABLE = [p for p in docblocks.PAGES if _runnable(p)]


@pytest.fixture
def page_database(services: None, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Postgres database of the page's own (its tables, ours), dropped after."""
    from tests.support import DATABASE_URL

    name = f"docs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    head, _, _ = DATABASE_URL.rpartition("/")
    scheme, _, rest = head.partition("://")
    try:
        yield f"postgresql+psycopg://{rest}/{name}"  # as SQLAlchemy's create_engine wants it
    finally:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def run_page(page: Path, folder: Path, extra: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.docblocks", "run", str(page), str(folder)],
        cwd=ROOT, env={**os.environ, **extra}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs_as_written(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = docblocks.parse(page)
    extra: dict[str, str] = {}
    redis = None
    if docblocks.needs_database(blocks):
        extra["DOCBLOCKS_DATABASE_URL"] = request.getfixturevalue("page_database")
    if docblocks.needs_broker(blocks):
        try:
            redis = PrivateRedis().start()
        except ServerUnavailable as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(str(exc))
        extra["DOCBLOCKS_BROKER_URL"] = redis.url
    try:
        run_page(page, tmp_path, extra)
    finally:
        if redis is not None:
            redis.stop()
