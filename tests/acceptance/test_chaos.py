"""The chaos harness (tests/chaos/harness.py) as tests: a short run in the
normal suite, a long one under ``-m slow`` (DBOS_CHAOS_WORKFLOWS, default
5000 there)."""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import Config, run
from tests.pgcluster import _can_make_clusters


def _run(cfg: Config) -> None:
    why = _can_make_clusters()
    if why is not None:
        if os.environ.get("CI"):
            raise RuntimeError(why)
        pytest.skip(why)
    result = run(cfg)
    print(result.table())
    assert result.ok, result.table()


def test_chaos_short(services: None) -> None:
    """200 workflows under ~30 s of faults: every invariant holds."""
    _run(Config(workflows=200, fault_window=30.0, finish_timeout=120.0))


@pytest.mark.slow
def test_chaos_long(services: None) -> None:
    n = int(os.environ.get("DBOS_CHAOS_WORKFLOWS", "5000"))
    _run(Config(workflows=n, fault_window=max(60.0, n / 20), finish_timeout=max(300.0, n / 5)))
