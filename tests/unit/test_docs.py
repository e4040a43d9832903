"""The documentation's code blocks are well formed, the site's pages and
links hold together, every public name is in the API reference with a
docstring, and the block runner (tests/docblocks.py) fails a block that does
not do what its page says. The pages themselves run in
tests/acceptance/test_docs_examples.py."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import docblocks
from tests.docblocks import ROOT, DocError

PUBLIC_MODULES = ["dbos_celery", "dbos_celery.testing", "dbos_celery.contrib.django"]


@pytest.mark.parametrize("page", docblocks.PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_is_marked_and_well_formed(page: Path) -> None:
    for block in docblocks.parse(page):
        docblocks.check_static(block)


def test_blocks_left_unrun_are_few_and_say_why() -> None:
    code = [b for p in docblocks.PAGES for b in docblocks.parse(p) if b.lang != "text"]
    unrun = [b for b in code if "not run" in b.markers]
    for block in unrun:
        assert len(block.markers["not run"]) >= 15, f"{block.where}: say why it is not run"
    assert len(unrun) <= len(code) // 4, [b.where for b in unrun]


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return []


def test_every_docs_page_is_in_the_site_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages - listed == set(), "add them to nav in mkdocs.yml"
    assert listed - pages == set(), "the nav names pages that do not exist"


def test_the_readmes_links_lead_somewhere() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text()):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def _public_names() -> list[tuple[str, str]]:
    return [(m, n) for m in PUBLIC_MODULES for n in importlib.import_module(m).__all__]


def test_every_public_name_is_in_the_api_reference() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / "docs" / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)\s*$", text, re.M))
    missing = [f"{m}.{n}" for m, n in _public_names() if f"{m}.{n}" not in documented]
    assert missing == [], "add them to a page of docs/reference"


def _attribute_docstring(module: str, name: str) -> str | None:
    """The string literal right after ``name = ...`` in the module that
    defines it (what mkdocstrings shows for a constant)."""
    package = importlib.import_module(module)
    for source in Path(package.__file__ or "").parent.glob("*.py"):
        body = ast.parse(source.read_text()).body
        for stmt, after in zip(body, body[1:], strict=False):
            targets = (
                stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
            )
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    return str(after.value.value)
    return None


@pytest.mark.parametrize(("module", "name"), _public_names())
def test_every_public_name_has_a_docstring(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    if not (inspect.isclass(obj) or callable(obj)):
        assert _attribute_docstring(module, name), f"{module}.{name}: no docstring"
        return
    own = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert (own or "").strip(), f"{module}.{name}: no docstring"
    if inspect.isclass(obj) and not issubclass(obj, BaseException):  # errors: the class's own
        for member, value in vars(obj).items():
            target = value.fget if isinstance(value, property) else value
            target = getattr(target, "__func__", target)
            if member.startswith("_") or not (callable(target) or isinstance(value, property)):
                continue
            assert (target.__doc__ or "").strip(), f"{module}.{name}.{member}: no docstring"


# --- the runner fails what does not do what its page says -------------------


def test_a_block_without_a_language_or_with_an_unknown_marker_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    for text, why in [
        ("```\nprint(1)\n```\n", "language"),
        ("<!-- not run -->\n```python\nprint(1)\n```\n", "argument"),
        ("<!-- skip: later -->\n```python\nprint(1)\n```\n", "not a marker"),
        ("```yaml\na: 1\n```\n", "cannot be run"),
        ("```python\nprint(1)\n", "never closed"),
    ]:
        with pytest.raises(DocError, match=why):
            docblocks.parse(page, text)


def test_an_excerpt_that_is_not_in_its_file_fails() -> None:
    text = "<!-- excerpt: examples/checkout/app.py -->\n```python\nDurable(app, {})\n```\n"
    (block,) = docblocks.parse(ROOT / "page.md", text)
    with pytest.raises(DocError, match="is not in"):
        docblocks.check_static(block)
    good = "<!-- excerpt: examples/checkout/app.py -->\n```python\n" + (
        "durable = Durable(app, DATABASE_URL, redis_url=REDIS_URL, schema=SCHEMA)\n```\n"
    )
    docblocks.check_static(docblocks.parse(ROOT / "page.md", good)[0])


def _run(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    page = tmp_path / "page.md"
    page.write_text(text)
    folder = tmp_path / "run"
    folder.mkdir()
    return subprocess.run(
        [sys.executable, "-m", "tests.docblocks", "run", str(page), str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


GOOD = """
<!-- file: greet.py -->
```python
def greet(name):
    return f"hello {name}"
```

```python
from greet import greet

print(greet("ada"))
```

<!-- output -->
```text
hello ada
```

```sh
python -c 'import greet; print(greet.greet("bob"))'
```

<!-- output -->
```text
hello ... bob
```
"""


@pytest.mark.parametrize(
    ("broken", "says"),
    [
        (GOOD, None),
        (GOOD.replace('print(greet("ada"))', 'print(greet("ada", 2))'), "page.md:8: raised"),
        (GOOD.replace("hello ada\n", "hello eve\n"), "no line like 'hello eve'"),
        (GOOD.replace("python -c", "false && python -c"), "exited 1"),
        (GOOD + "\n<!-- background: ready. -->\n```sh\necho starting\n```\n", "without printing"),
        (GOOD + "\n<!-- wait for: done -->\n```sh\ntrue\n```\n", "nothing runs"),
    ],
    ids=["passes", "raises", "other-output", "command-fails", "never-ready", "nothing-to-wait"],
)
def test_the_runner_fails_a_block_that_does_not_do_what_the_page_says(
    tmp_path: Path, broken: str, says: str | None
) -> None:
    proc = _run(tmp_path, broken)
    if says is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert says in proc.stderr, proc.stderr
