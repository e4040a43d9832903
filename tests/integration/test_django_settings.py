"""dbos_celery.contrib.django without a project: the database URL read
from ``settings.DATABASES`` (a bad ENGINE is a clear error before anything
is written), ``durable_for``'s options, and transaction steps on Django's
SQLite connection. Each runs in a fresh interpreter (Django's settings are
configured once per process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dbos_celery import ConfigurationError
from dbos_celery.contrib.django.transactions import driver_connection
from tests.support import ROOT


def _django(tmp_path: Path, databases: dict[str, Any], body: str, **settings: Any) -> Any:
    """Run ``body`` in a process whose Django settings have ``databases``;
    what it printed last, as JSON."""
    script = textwrap.dedent(f"""
        import json
        import django
        from django.conf import settings
        settings.configure(DATABASES={databases!r}, USE_TZ=True,
                           INSTALLED_APPS=["dbos_celery.contrib.django"], **{settings!r})
        django.setup()
        from celery import Celery
        from dbos_celery import ConfigurationError
        from dbos_celery.contrib.django import database_url, durable_for, get_durable

        def error(call):
            try:
                call()
            except ConfigurationError as exc:
                return str(exc)
            return None
    """) + textwrap.dedent(body)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


PG = "django.db.backends.postgresql"


def test_database_url_from_every_piece_of_the_settings(tmp_path: Path) -> None:
    databases = {
        "default": {"ENGINE": PG, "NAME": "shop", "USER": "u@x", "PASSWORD": "p:w/d",
                    "HOST": "db.internal", "PORT": 6432,
                    "OPTIONS": {"sslmode": "require", "application_name": "web",
                                "isolation_level": 1, "server_side_binding": True}},
        "socket": {"ENGINE": PG, "NAME": "shop", "USER": "postgres", "HOST": "/run/postgresql"},
        "v6": {"ENGINE": PG, "NAME": "shop", "HOST": "::1", "PORT": "5433"},
        "service": {"ENGINE": PG, "NAME": None, "OPTIONS": {"service": "shop"}},
        "maintenance": {"ENGINE": PG, "NAME": None},
        "file": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3")},
    }  # fmt: skip
    got = _django(tmp_path, databases, "print(json.dumps({a: database_url(a) for a in "
                  f"{sorted(databases)!r}}}))")  # fmt: skip
    assert got == {
        "default": "postgresql+psycopg://u%40x:p%3Aw%2Fd@db.internal:6432/shop"
        "?sslmode=require&application_name=web",
        "socket": "postgresql+psycopg://postgres@/shop?host=%2Frun%2Fpostgresql",
        "v6": "postgresql+psycopg://[::1]:5433/shop",
        "service": "postgresql+psycopg:///?service=shop",
        "maintenance": "postgresql+psycopg:///postgres",
        "file": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }


def test_unsupported_database_is_a_clear_error_before_anything_is_written(
    tmp_path: Path,
) -> None:
    databases = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "legacy": {"ENGINE": "django.db.backends.mysql", "NAME": "shop"},
        "custom": {"ENGINE": "no.such.backend", "NAME": "x"},
        "dummy": {"ENGINE": "django.db.backends.dummy"},
    }
    got = _django(tmp_path, databases, """
        aliases = ("default", "legacy", "custom", "dummy", "none")
        out = {a: error(lambda: database_url(a)) for a in aliases}
        durable = durable_for(Celery("p", broker="memory://"), alias="legacy")

        @durable.workflow(name="p.order")
        def order() -> None: ...

        out["start"] = error(lambda: order.start(workflow_id="o-1"))
        out["migrate"] = error(durable.migrate)
        print(json.dumps(out))
    """)  # fmt: skip
    assert "in-memory SQLite" in got["default"] and "'TEST'" in got["default"]
    for alias, engine in (("legacy", "django.db.backends.mysql"), ("custom", "no.such.backend"),
                          ("dummy", "django.db.backends.dummy")):  # fmt: skip
        assert f"settings.DATABASES['{alias}']['ENGINE'] is '{engine}'" in got[alias]
        assert "needs django.db.backends.postgresql or django.db.backends.sqlite3" in got[alias]
    assert "has no 'none' database" in got["none"]
    assert got["start"] == got["migrate"] == got["legacy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no database file anywhere


def test_durable_for_takes_its_database_from_databases_only(tmp_path: Path) -> None:
    db = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "d.db")}}
    got = _django(tmp_path, db, """
        app = Celery("p", broker="memory://")
        out = {
            "none_yet": error(get_durable),
            "url": error(lambda: durable_for(app, database_url="sqlite:///x.db")),
            "unknown": error(lambda: durable_for(app, colour="blue")),
        }
        settings.DBOS_CELERY = ["schema"]
        out["setting"] = error(lambda: durable_for(app))
        settings.DBOS_CELERY = {"schema": "wf", "poll_interval": 0.25}
        durable = durable_for(app)
        out["made"] = [get_durable() is durable, durable.services.settings.schema,
                       durable.services.settings.poll_interval]
        print(json.dumps(out))
    """)  # fmt: skip
    assert "durable_for(app) in proj/celery.py" in got["none_yet"]
    assert "durable_for() takes no database_url" in got["url"]
    assert "no option colour" in got["unknown"]
    assert "DBOS_CELERY must be a dict" in got["setting"]
    assert got["made"] == [True, "wf", 0.25]


def test_transaction_step_on_djangos_sqlite_connection_commits_with_its_checkpoint(
    tmp_path: Path,
) -> None:
    db = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "d.db")}}
    got = _django(tmp_path, db, """
        from django.db import connection
        from dbos_celery.shared import shared_transaction, shared_workflow

        with connection.cursor() as c:
            c.execute("CREATE TABLE ledger (what text)")

        @shared_transaction(name="p.write")
        def write(what: str) -> str:
            with get_durable().connection.cursor() as c:
                c.execute("INSERT INTO ledger VALUES (%s)", [what])
            if what == "boom":
                raise ValueError(what)
            return what

        @shared_workflow(name="p.book")
        def book() -> str:
            write("one")
            try:
                write("boom")
            except ValueError:
                pass
            return "booked"

        durable = durable_for(Celery("p", broker="memory://"))
        result = book()
        with connection.cursor() as c:
            c.execute("SELECT what FROM ledger")
            rows = [r[0] for r in c.fetchall()]
        (wf,) = durable.list_workflows()
        steps = [[s.name, s.output, s.error] for s in durable.list_steps(wf.workflow_id)]
        durable.close()
        print(json.dumps([result, rows, steps]))
    """)  # fmt: skip
    result, rows, steps = got
    assert (result, rows) == ("booked", ["one"])  # "boom" rolled back with its step
    assert steps == [["p.write", "one", None], ["p.write", None, "ValueError: boom"]]


def test_django_connection_on_another_driver_is_refused() -> None:
    foreign = SimpleNamespace(alias="default", connection=object())
    with pytest.raises(ConfigurationError, match="connected through builtins.object"):
        driver_connection(foreign)


def test_start_and_send_in_a_django_transaction_commit_or_roll_back_with_it(
    tmp_path: Path, env: Any
) -> None:
    """``connection=django.db.connection``: inside ``transaction.atomic()``
    the row and the message go with the block (published by Django's
    on_commit, never before); outside one (autocommit) at once."""
    from sqlalchemy.engine import make_url

    url = make_url(env.database_url)
    db = {"default": {"ENGINE": PG, "NAME": url.database, "USER": url.username or "postgres",
                      "HOST": url.host or "", "PORT": str(url.port or "")}}  # fmt: skip
    got = _django(tmp_path, db, """
        import time
        from django.db import connection, transaction

        durable = durable_for(Celery("p", broker="memory://"))
        published = []
        durable.services.publish = lambda wid, name, queue: published.append(wid)

        @durable.workflow(name="p.wf")
        def wf() -> int:
            return 1

        wf.start(workflow_id="target")
        try:
            with transaction.atomic():
                wf.start(workflow_id="rolled", connection=connection)
                durable.send("target", "m1", connection=connection)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        with transaction.atomic():
            wf.start(workflow_id="kept", connection=connection)
            durable.send("target", "m2", connection=connection)
            time.sleep(0.2)
            before_commit = list(published)
        deadline = time.monotonic() + 10
        while "kept" not in published and time.monotonic() < deadline:
            time.sleep(0.01)
        wf.start(workflow_id="auto", connection=connection)  # no atomic block: at once
        after_auto = list(published)
        ids = sorted(w.workflow_id for w in durable.list_workflows())
        with connection.cursor() as c:
            c.execute(f'SELECT count(*) FROM "{durable.services.settings.schema}".messages')
            messages = c.fetchone()[0]
        durable.close()
        print(json.dumps([before_commit, after_auto, ids, messages]))
    """, DBOS_CELERY={"schema": env.schema})  # fmt: skip
    before_commit, after_auto, ids, messages = got
    assert before_commit == ["target"]  # not before the commit
    assert after_auto == ["target", "kept", "auto"]
    assert ids == ["auto", "kept", "target"]  # "rolled" never existed
    assert messages == 1  # m2 only
