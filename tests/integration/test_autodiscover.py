"""durable.autodiscover registers the workflows of ``workflows.py`` modules,
which Celery's own autodiscovery (``tasks.py`` only) never imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_autodiscover_imports_workflows_modules(tmp_path: Path) -> None:
    pkg = tmp_path / "proj"
    (pkg / "orders").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "orders" / "__init__.py").write_text("")
    (pkg / "app.py").write_text(
        textwrap.dedent(f"""
        from celery import Celery
        from dbos_celery import Durable
        app = Celery("proj", broker="memory://")
        durable = Durable(app, "sqlite:///{tmp_path / "db.sqlite"}")
        durable.autodiscover(["proj.orders"])
    """)
    )
    (pkg / "orders" / "workflows.py").write_text(
        textwrap.dedent("""
        from proj.app import durable
        @durable.workflow(name="orders.checkout")
        def checkout() -> str:
            return "ok"
    """)
    )
    script = (
        "from proj.app import app, durable\n"
        "before = sorted(durable.workflows)\n"
        "app.loader.import_default_modules()  # as a worker does at start-up\n"
        "print(before, sorted(durable.workflows), 'orders.checkout' in app.tasks)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] ['orders.checkout'] True"
