"""Run the code blocks of README.md and docs/*.md as a reader would.

Every fenced block has a language. ``python`` and ``sh`` blocks run; a
``toml`` block must parse; a ``text`` block is output or a picture, not
code. What happens to a block is said by HTML comments on the lines right
before it (invisible on the rendered page, plain in the Markdown):

``<!-- file: NAME -->``
    The block is the file NAME of the reader's project: it is written into
    the page's folder, and the later blocks import it or run it.
``<!-- background: TEXT -->``
    A ``sh`` block that keeps running (a worker in a terminal of its own):
    started in the background, ready once its output shows TEXT, stopped
    (SIGTERM, then SIGKILL) when the page ends.
``<!-- wait for: TEXT -->``
    Run the block only once the latest background command printed TEXT (as
    a reader waits for a line in the worker's terminal).
``<!-- output -->``
    A ``text`` block: what the command before it prints. Each of its lines
    must match a line of that output, in order; ``...`` in a line stands
    for anything.
``<!-- excerpt: PATH -->``
    The block is an excerpt of PATH (from the repository's root), which
    the suite runs: each of its code lines appears there, in order
    (comments and lines of ``...`` aside).
``<!-- not run: REASON -->``
    The block is not run, for REASON (which must be given).

Unmarked ``python`` blocks of a page run in order in one namespace (the
module ``shop``, as if they were the reader's ``shop.py`` and a session
importing it), in the page's own folder (where its files are); unmarked
``sh`` blocks run with bash there. Each Durable a ``python`` block creates
is pointed at a throwaway database (``dbos_celery.testing.bind``: a SQLite
file in the folder) and a Celery worker runs its workflows in threads of
the page's process (``start_durable_worker``), so that a block that starts
a workflow and waits for its result works as it would with a worker
running beside it. Pages whose commands run a real ``celery worker`` (a
``background`` block) get a Redis of their own as Celery's broker, through
Celery's ``CELERY_BROKER_URL``.

    python -m tests.docblocks run docs/tutorial.md    # run one page, say what failed
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: toml blocks are not checked
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell"}
CODE = PYTHON | SHELL | {"toml"}
NOT_CODE = {"text"}
MARKERS = {"file", "background", "wait for", "output", "excerpt", "not run"}
NEEDS_ARGUMENT = MARKERS - {"output"}
SESSION = "shop"  # the module a page's Python session is, as if the reader's shop.py
WAIT = 60.0  # seconds a background command may take to print what is waited for

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<key>[a-z ]+?)\s*(?::\s*(?P<arg>.*?))?\s*-->\s*$")


class DocError(AssertionError):
    """A block that is malformed, or that did not do what the page says."""


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    markers: dict[str, str]

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"

    @property
    def runs(self) -> bool:
        """Whether running the page does something with this block."""
        return (
            "not run" not in self.markers
            and "excerpt" not in self.markers
            and (self.lang in PYTHON | SHELL)
        )


def parse(page: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of a page with their markers; DocError for a block
    without a language, a marker that is not one, or one without its
    argument."""
    lines = (page.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, lang = opening["indent"], opening["fence"], opening["lang"].lower()
        where = f"{page.name}:{i + 1}"
        end = i + 1
        while end < len(lines) and not re.match(
            rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]
        ):
            end += 1
        if end == len(lines):
            raise DocError(f"{where}: the block is never closed")
        body = [
            line[len(indent) :] if line.startswith(indent) else line.lstrip()
            for line in lines[i + 1 : end]
        ]
        if not lang:
            raise DocError(f"{where}: give the block a language (```python, ```sh, ```text ...)")
        blocks.append(Block(page, i + 1, lang, "\n".join(body) + "\n", _markers(lines, i, where)))
        i = end + 1
    for block in blocks:
        _check(block)
    return blocks


def _markers(lines: list[str], fence: int, where: str) -> dict[str, str]:
    """The marker comments right before line ``fence`` (blank lines between
    are allowed; any other line ends them)."""
    found: dict[str, str] = {}
    j = fence - 1
    while j >= 0 and (not lines[j].strip() or lines[j].lstrip().startswith("<!--")):
        m = _MARKER.match(lines[j])
        if lines[j].strip():
            if m is None or m["key"] not in MARKERS:
                raise DocError(f"{where}: {lines[j].strip()!r} is not a marker ({sorted(MARKERS)})")
            if m["key"] in NEEDS_ARGUMENT and not m["arg"]:
                raise DocError(f"{where}: the marker {m['key']!r} needs its argument after a colon")
            found[m["key"]] = m["arg"] or ""
        j -= 1
    return found


def _check(block: Block) -> None:
    m = block.markers
    if block.lang not in CODE | NOT_CODE and "not run" not in m and "excerpt" not in m:
        raise DocError(f"{block.where}: a ```{block.lang} block cannot be run: mark it not run")
    if "output" in m and block.lang != "text":
        raise DocError(f"{block.where}: an output block is a ```text block")
    if "background" in m and block.lang not in SHELL:
        raise DocError(f"{block.where}: only a shell command runs in the background")
    if "file" in m and ("not run" in m or "background" in m):
        raise DocError(f"{block.where}: a file is neither run in the background nor skipped")


def check_static(block: Block) -> None:
    """What can be checked without running anything: a toml block parses,
    a python block compiles, an excerpt is in its file."""
    if "not run" in block.markers:
        return
    if "excerpt" in block.markers:
        check_excerpt(block)
    elif block.lang == "toml" and tomllib is not None:
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as exc:
            raise DocError(f"{block.where}: not TOML: {exc}") from None
    elif block.lang in PYTHON:
        compile(_padded(block), str(block.page), "exec")


def _code_lines(text: str, lang: str) -> list[str]:
    """The lines that carry code: without comments, blank lines and ``...``."""
    out = []
    for line in text.splitlines():
        if lang in PYTHON | SHELL:
            line = re.sub(r"\s+#.*$", "", line)
            if line.lstrip().startswith("#"):
                continue
        line = " ".join(line.split())
        if line and line not in ("...", "…"):
            out.append(line)
    return out


def check_excerpt(block: Block) -> None:
    source = ROOT / block.markers["excerpt"]
    if not source.is_file():
        raise DocError(f"{block.where}: excerpt of {source}, which does not exist")
    have = [" ".join(line.split()) for line in source.read_text().splitlines()]
    at = 0
    for want in _code_lines(block.code, block.lang):
        for k in range(at, len(have)):
            if want == have[k] or re.sub(r"\s+#.*$", "", have[k]) == want:
                at = k + 1
                break
        else:
            raise DocError(
                f"{block.where}: {want!r} is not in {block.markers['excerpt']} (after line {at})"
            )


def check_output(block: Block, printed: str) -> None:
    got = printed.splitlines()
    at = 0
    for want in block.code.splitlines():
        if not want.strip():
            continue
        parts = want.strip().split("...")
        pattern = ".*".join(r"\s+".join(map(re.escape, p.split())) for p in parts)
        for k in range(at, len(got)):
            if re.search(pattern, got[k]):
                at = k + 1
                break
        else:
            raise DocError(f"{block.where}: the output has no line like {want!r}:\n{printed}")


def _padded(block: Block) -> str:
    """The code with blank lines before it, so that tracebacks give the
    page's line numbers."""
    return "\n" * block.line + block.code


# --- running a page ---------------------------------------------------------


class Background:
    def __init__(self, block: Block, folder: Path, env: dict[str, str]) -> None:
        self.block = block
        self.log = folder / f".background-{block.line}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", block.code], cwd=folder, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        # reap it when it dies, as a terminal's shell does (a zombie's pid
        # would still look alive to a pidfile check)
        threading.Thread(target=self.proc.wait, daemon=True).start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, where: str) -> None:
        deadline = time.monotonic() + WAIT
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                ended = "ended" if self.proc.poll() is not None else f"ran {WAIT:g} s"
                raise DocError(
                    f"{where}: waited for {text!r} from {self.block.where}, which {ended} "
                    f"without printing it:\n{self.output()[-4000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue


class Page:
    """One page run in one folder: its files, its session, its commands."""

    def __init__(self, path: Path, folder: Path, env: dict[str, str]) -> None:
        self.path, self.folder, self.env = path, folder, env
        self.module = ModuleType(SESSION)
        self.namespace: dict[str, Any] = self.module.__dict__
        self.stack = ExitStack()
        self.served: dict[int, Any] = {}  # id(durable) -> durable, bound and served
        self.background: list[Background] = []
        self.printed = ""

    def run(self, blocks: list[Block]) -> None:
        os.chdir(self.folder)
        sys.path.insert(0, str(self.folder))
        if any(b.runs and b.lang in PYTHON and "file" not in b.markers for b in blocks):
            sys.modules[SESSION] = self.module
        try:
            for block in blocks:
                self.block(block)
        finally:
            for bg in reversed(self.background):
                bg.stop()
            self.stack.close()

    def block(self, block: Block) -> None:
        m = block.markers
        check_static(block)
        if "not run" in m or "excerpt" in m:
            return
        if "wait for" in m:
            if not self.background:
                raise DocError(f"{block.where}: waits for {m['wait for']!r}, but nothing runs")
            self.background[-1].wait_for(m["wait for"], block.where)
        if "file" in m:
            target = self.folder / m["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
        elif "output" in m:
            check_output(block, self.printed)
        elif "background" in m:
            bg = Background(block, self.folder, self.env)
            self.background.append(bg)
            bg.wait_for(m["background"], block.where)
        elif block.lang in SHELL:
            self.shell(block)
        elif block.lang in PYTHON:
            self.python(block)

    def shell(self, block: Block) -> None:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code], cwd=self.folder, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
        )  # fmt: skip
        self.printed = proc.stdout
        if proc.returncode != 0:
            raise DocError(f"{block.where}: exited {proc.returncode}:\n{proc.stdout[-4000:]}")

    def python(self, block: Block) -> None:
        import contextlib
        import io
        import traceback

        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(_padded(block), str(block.page), "exec"), self.namespace)
        except BaseException as exc:
            trace = "".join(traceback.format_exception(exc))
            raise DocError(f"{block.where}: raised\n{out.getvalue()}{trace}") from None
        finally:
            sys.stdout.write(out.getvalue())
        self.printed = out.getvalue()
        self.serve()

    def _durables(self) -> Iterator[Any]:
        from dbos_celery import Durable

        for value in list(self.namespace.values()):
            if isinstance(value, Durable):
                yield value
            elif isinstance(value, ModuleType) and str(self.folder) in str(
                getattr(value, "__file__", "")
            ):
                yield from (v for v in vars(value).values() if isinstance(v, Durable))

    def serve(self) -> None:
        """A test database and an in-process worker for each new Durable; the
        worker learns the workflows defined after it started."""
        from dbos_celery.testing import (
            TestDatabase,
            bind,
            postgres_database,
            sqlite_database,
            start_durable_worker,
        )

        for durable in self._durables():
            if id(durable) not in self.served:
                if self.env.get("DATABASE_URL"):
                    database = self.stack.enter_context(postgres_database(self.env["DATABASE_URL"]))
                elif not self.served:  # the file Durable(app) would use: the CLI finds it
                    path = self.folder / "dbos_celery.sqlite"
                    database = TestDatabase(f"sqlite:///{path}", "dbos_celery", "sqlite")
                else:
                    database = sqlite_database(self.folder)
                self.stack.enter_context(bind(durable, database))
                worker = self.stack.enter_context(start_durable_worker(durable))
                _learn_new_tasks(durable.app, worker)
                self.served[id(durable)] = durable


def _learn_new_tasks(app: Any, worker: Any) -> None:
    """Make ``worker`` run the tasks registered after it started, as soon as
    they are (a worker knows the tasks its app had when it started; a
    reader's worker would be started again with the new code)."""
    registry = app.tasks

    class Learning(type(registry)):  # type: ignore[misc]
        def __setitem__(self, name: str, task: Any) -> None:
            super().__setitem__(name, task)
            worker.consumer.strategies[name] = task.start_strategy(app, worker.consumer)

    registry.__class__ = Learning


def page_env(
    folder: Path, broker_url: str | None = None, database_url: str | None = None
) -> dict[str, str]:
    """The environment of a page's commands: this Python's scripts first on
    PATH, the repository importable (as in a clone of it), no settings of
    the developer's; Celery's broker when the page runs workers, and
    ``DATABASE_URL`` (a database of the page's own) when its code reads it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBOS_CELERY_", "CELERY_"))}
    for name in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "SCHEMA", "QUEUE"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(folder)
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def needs_broker(blocks: list[Block]) -> bool:
    return any("background" in b.markers for b in blocks if b.runs)


def needs_database(blocks: list[Block]) -> bool:
    return any("DATABASE_URL" in b.code for b in blocks if b.runs or "file" in b.markers)


def runs_anything(blocks: list[Block]) -> bool:
    return any(b.runs for b in blocks)


def run_page(path: Path, folder: Path, env: dict[str, str], text: str | None = None) -> None:
    """Run a page's blocks in ``folder`` (in this process: run it in a
    process of its own, as :func:`main` does)."""
    os.environ.clear()
    os.environ.update(env)
    Page(path, folder, env).run(parse(path, text))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "run":
        print(__doc__.split("\n\n")[-1].strip(), file=sys.stderr)
        return 2
    path = Path(argv[1]).resolve()
    folder = Path(argv[2]) if len(argv) > 2 else Path(tempfile.mkdtemp(prefix="docblocks-"))
    broker = os.environ.get("DOCBLOCKS_BROKER_URL")
    database = os.environ.get("DOCBLOCKS_DATABASE_URL")
    try:
        run_page(path, folder, page_env(folder, broker, database))
    except DocError as exc:
        print(f"\nFAILED {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if len(argv) <= 2:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nOK {path}", flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a thread a page's code left behind does not keep it running
