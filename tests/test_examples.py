"""Every example runs as a program against the test services and says what
it should."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import ROOT, Env


@pytest.mark.parametrize(
    ("command", "wakeups"),
    [(["-m", "examples.checkout.app"], "redis"), (["examples/checkout/app.py"], "polling")],
    ids=["module-redis", "file-polling"],
)
def test_checkout_example_fulfils_paid_order_and_cancels_unpaid_one(
    env: Env, command: list[str], wakeups: str
) -> None:
    run_env = {
        **os.environ,
        "DATABASE_URL": env.database_url,
        "REDIS_URL": env.redis_url if wakeups == "redis" and env.redis_url else "",
        "BROKER_URL": env.broker_url,
        "SCHEMA": env.schema,
        "QUEUE": env.queue,
    }
    proc = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=run_env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    paid = re.search(r"^(order-\w+): result 'fulfilled', status SUCCESS$", out, re.M)
    assert paid, out
    assert out.count("charging order") == 1, out
    assert f"charging order {paid.group(1)}" in out
    unpaid = re.search(
        r"^(order-\w+): result 'cancelled' after ([\d.]+) s, status SUCCESS$", out, re.M
    )
    assert unpaid, out
    assert float(unpaid.group(2)) >= 2.9  # the 3 s timeout, not earlier
    # what the program printed is what the database holds
    rows = env.sql("SELECT id, status FROM {schema}.workflows ORDER BY id")
    assert sorted(rows) == sorted([(paid.group(1), "SUCCESS"), (unpaid.group(1), "SUCCESS")])
    charges = env.sql("SELECT workflow_id FROM {schema}.steps WHERE name = 'checkout.charge'")
    assert charges == [(paid.group(1),)]
    # the retried webhook was stored once and consumed: nothing is left over
    assert env.sql("SELECT count(*) FROM {schema}.messages") == [(0,)]
    assert env.sql("SELECT count(*) FROM {schema}.send_keys") == [(1,)]
