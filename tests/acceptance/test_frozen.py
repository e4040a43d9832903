"""A frozen process (SIGSTOP: a VM pause, a partition) holds nothing that
the cluster needs for long: with one process frozen while it holds the
sweep's lock, another worker still recovers a killed worker's workflow,
during the freeze."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from tests.apps.core import build, open_gate
from tests.support import ROOT, Env, WorkerProcess, app_fixture, start_worker, wait_for

ns = app_fixture(build)

# takes the sweep's lock in one of the library's sessions, then waits: what a
# process frozen mid-sweep leaves behind
HOLDER = """
import sys, time
from celery import Celery
from dbos_celery import Durable
from dbos_celery.keys import sweep_lock
from dbos_celery.store import workers
d = Durable(Celery("holder"), sys.argv[1], schema=sys.argv[2])
with d.services.store.begin() as ex:
    assert ex.first(workers._SWEEP_LOCK, {"lock": sweep_lock(sys.argv[2])})[0]
    print("held", flush=True)
    time.sleep(120)
"""


def test_killed_workers_workflow_is_recovered_while_the_sweep_lock_holder_is_frozen(
    env: Env, workers: list[WorkerProcess], ns: SimpleNamespace
) -> None:
    victim = start_worker(env, workers, name="victim", concurrency=1)
    handle = ns.five_steps.start(gate_step=2, workflow_id="frozen")
    wait_for(lambda: "step2" in env.ledger("frozen"), 20, victim.describe)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, env.database_url, env.schema], cwd=ROOT,
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        os.killpg(holder.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        victim.kill()
        survivor = start_worker(env, workers, name="survivor", concurrency=1)
        wait_for(lambda: env.ledger("frozen").count("step2") == 2, 30, survivor.describe)
        recovered = time.monotonic() - frozen_at
        open_gate(env.schema, "frozen", "step2")
        assert handle.result(timeout=30) == [f"step{i}" for i in range(1, 6)]
        # (the holder was never resumed: its session was ended by the server)
        print(f"recovered {recovered:.1f} s after the freeze and the kill")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert env.ledger("frozen").count("step1") == 1
