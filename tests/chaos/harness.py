"""Jepsen-style chaos run: the workload of tests/chaos/app.py under faults.

    python -m tests.chaos.harness [--workflows 200] [--seed S] [--producers 2]

Set-up: a private Postgres cluster (the library's tables), a private Redis
(wakeups AND the Celery broker, so FLUSHALL and restarts lose queued task
messages and pub/sub hints), the ledger in the shared Postgres (never
faulted). Two workflow workers and one task worker (``celery worker -c 2``
each, prefork), M producer processes sending each workflow two messages
with idempotency keys (some sends repeated on purpose with the same key).

Faults at random times (seeded RNG, seed printed): SIGKILL of a worker's
process group (restarted after a delay), SIGSTOP of a worker's process
group for 3-8 s (a frozen machine; SIGCONT later, while other faults go
on), a step that holds the GIL for 3-6 s (tests/chaos/app.py), Redis
stopped and restarted, Redis FLUSHALL, pg_terminate_backend of every
session of the private cluster, and once per run ``pg_ctlcluster
restart``. Then the faults stop, everything is
brought back up, and the run waits for the workload to finish.

Invariants (from Postgres and the ledger): every workflow SUCCESS with the
expected result; every message consumed exactly once by the right recv in
FIFO order, none left over, one stored per idempotency key; no step or call
body started after its checkpoint committed (a side effect is stamped with
the time its body started: a body frozen mid-way by SIGSTOP and finished
after a takeover is the overlap the README documents; re-runs before a
checkpoint are counted and reported); nothing stuck. Exit status 1 on a violation.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.chaos.app import STEPS, build, expected, tasks_queue, wid
from tests.pgcluster import PgCluster, PrivateRedis
from tests.support import DATABASE_URL, Env, WorkerProcess


@dataclass
class Config:
    workflows: int = 200
    producers: int = 2
    workflow_workers: int = 2
    seed: int | None = None
    fault_window: float = 35.0  # seconds of faults after the workload starts
    fault_every: tuple[float, float] = (1.0, 3.0)
    finish_timeout: float = 120.0  # after the faults: all must finish by then


@dataclass
class Result:
    seed: int
    rows: list[tuple[str, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        width = max(len(k) for k, _ in self.rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in self.rows]
        lines += [f"VIOLATION: {v}" for v in self.violations[:50]]
        return "\n".join(lines)


# A worker revokes a held copy of a call task within a heartbeat (0.5 s) of
# its outcome; a copy that started before that still runs (at-least-once).
CALL_REVOKE_WINDOW = 1.5


def _producer(
    env_vars: dict[str, str], indexes: list[int], n: int, seed: int, pace: float, out: Any
) -> None:
    """Send each workflow its two messages on topic "p", in order, each with
    an idempotency key; retry failures with the same key; repeat some."""
    ns = build(env_vars)
    rng = random.Random(seed)
    sent = repeats = errors = 0
    for i in indexes:
        me = wid(i, n)
        for k in (0, 1):
            times = 2 if rng.random() < 0.15 else 1
            for _ in range(times):
                while True:
                    try:
                        ns.durable.send(me, {"wf": me, "k": k}, "p", idempotency_key=f"{me}:{k}")
                        break
                    except Exception:  # the database or Redis is down: retry, same key
                        errors += 1
                        time.sleep(0.2)
            sent += 1
            repeats += times - 1
        time.sleep(rng.uniform(0, 2 * pace))  # spread over the fault window
    ns.durable.close()
    out.put((sent, repeats, errors))


class Chaos:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.schema = f"chaos_{uuid.uuid4().hex[:10]}"
        self.faults: Counter[str] = Counter()
        self.crashes = 0  # workers that died of a fault's side effect (restarted)
        self.pg = PgCluster()
        self.redis = PrivateRedis()
        self.ledger = Env(schema=self.schema, database_url=DATABASE_URL)
        self.env: Env | None = None
        self.workers: list[WorkerProcess | None] = []
        self.task_worker: WorkerProcess | None = None
        self.ns: Any = None

    # --- set-up -----------------------------------------------------------------

    def setup(self) -> None:
        self.pg.create()
        self.redis.start()
        self.ledger.create()
        self.ledger.sql("CREATE TABLE {schema}.gil (id serial PRIMARY KEY, seconds int)")
        self.env = Env(
            schema=self.schema,
            database_url=self.pg.url,
            redis_url=f"redis://127.0.0.1:{self.redis.port}/0",
            broker_url=f"redis://127.0.0.1:{self.redis.port}/1",
            extra={"DBOS_TEST_LEDGER_URL": DATABASE_URL},
        )
        self.ns = build(self.env.vars())
        self.ns.durable.migrate()
        self.workers = [None] * self.cfg.workflow_workers
        for k in range(self.cfg.workflow_workers):
            self.workers[k] = self._worker(k)
        self.task_worker = WorkerProcess(
            self.env, "tests.chaos.app", queues=tasks_queue(self.env.queue), name="tasks"
        )
        for w in [*self.workers, self.task_worker]:
            assert w is not None
            w.wait_ready(60)

    def _worker(self, k: int) -> WorkerProcess:
        assert self.env is not None
        return WorkerProcess(self.env, "tests.chaos.app", name=f"wf{k}")

    def teardown(self) -> None:
        for w in [*self.workers, self.task_worker]:
            if w is not None:
                w.kill()
        if self.ns is not None:
            self.ns.durable.close()
        self.redis.stop() if self.redis.alive() else None
        self.pg.drop()
        self.ledger.close()

    def supervise(self) -> None:
        """Act as a process supervisor would: a worker whose process exited
        or whose main process gave up (Celery's "Unrecoverable error", e.g.
        kombu's AttributeError on a Redis reconnect) is killed and restarted."""
        assert self.env is not None
        for k, w in [*enumerate(self.workers), (-1, self.task_worker)]:
            if w is None:
                continue
            dead = w.proc.poll() is not None or b"Unrecoverable error" in w.log_path.read_bytes()
            if not dead:
                continue
            self.crashes += 1
            print(f"  worker {w.log_path.name} crashed on its own; restarting it", flush=True)
            w.kill()
            if k == -1:
                self.task_worker = WorkerProcess(
                    self.env, "tests.chaos.app", queues=tasks_queue(self.env.queue), name="tasks"
                )
            else:
                self.workers[k] = self._worker(k)

    # --- faults -------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1
        if kind == "kill_worker":
            pool = [*range(len(self.workers)), -1]
            k = self.rng.choice(pool)
            victim = self.task_worker if k == -1 else self.workers[k]
            assert victim is not None
            victim.kill()
            time.sleep(self.rng.uniform(0.5, 2.0))
            if k == -1:
                assert self.env is not None
                self.task_worker = WorkerProcess(
                    self.env, "tests.chaos.app", queues=tasks_queue(self.env.queue), name="tasks"
                )
            else:
                self.workers[k] = self._worker(k)
        elif kind == "sigstop_worker":
            victim = self.workers[self.rng.randrange(len(self.workers))]
            assert victim is not None
            _signal_group(victim, signal.SIGSTOP)
            threading.Timer(self.rng.uniform(3.0, 8.0), _signal_group,
                            (victim, signal.SIGCONT)).start()  # fmt: skip
        elif kind == "gil_hold":
            self.ledger.sql("INSERT INTO {schema}.gil (seconds) VALUES (%s)",
                            self.rng.randint(3, 6))  # fmt: skip
        elif kind == "redis_restart":
            self.redis.stop()
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.redis.start()
        elif kind == "redis_flushall":
            self.redis.client.flushall()
        elif kind == "pg_terminate":
            self.pg.terminate_backends()
        elif kind == "pg_restart":
            self.pg.restart()
        else:
            raise ValueError(kind)

    def inject(self, until: float, done: Any) -> None:
        pg_restart_at = time.monotonic() + self.rng.uniform(0.2, 0.8) * (until - time.monotonic())
        kinds = ["kill_worker", "sigstop_worker", "gil_hold", "redis_restart", "redis_flushall",
                 "pg_terminate"]  # fmt: skip
        weights = [5, 2, 2, 2, 2, 3]
        while time.monotonic() < until and not done():
            time.sleep(self.rng.uniform(*self.cfg.fault_every))
            if pg_restart_at is not None and time.monotonic() >= pg_restart_at:
                kind, pg_restart_at = "pg_restart", None
            else:
                kind = self.rng.choices(kinds, weights)[0]
            print(f"  t+{time.monotonic() - self.t0:5.1f}s fault: {kind}", flush=True)
            self.fault(kind)
            self.supervise()
        if pg_restart_at is not None:  # the workload beat the window: restart anyway
            self.fault("pg_restart")

    # --- the run ------------------------------------------------------------------

    def lib_sql(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            cur = conn.execute(query.replace("{schema}", f'"{self.schema}"'), params)
            return cur.fetchall() if cur.description else []

    def describe(self, workflow_id: str) -> str:
        """The row's recovery state, to tell a lost publish from a lost wakeup."""
        row = self.lib_sql(
            "SELECT executor_id, reserved_by, publish_count, recovery_attempts, waiting_for, "
            "extract(epoch from now() - updated_at), extract(epoch from wake_at - now()), "
            "(SELECT count(*) FROM {schema}.steps s WHERE s.workflow_id = w.id), "
            "(SELECT count(*) FROM {schema}.messages m WHERE m.destination_id = w.id) "
            "FROM {schema}.workflows w WHERE id = %s",
            workflow_id,
        )[0]
        names = ("executor", "reserved_by", "publish_count", "recovery_attempts", "waiting_for",
                 "idle_s", "wake_in_s", "steps", "messages_waiting")  # fmt: skip
        return ", ".join(f"{k}={v!r}" for k, v in zip(names, row, strict=True))

    def unfinished(self) -> int:
        try:
            rows = self.lib_sql(
                "SELECT count(*) FROM {schema}.workflows WHERE status NOT IN "
                "('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED')"
            )
            return int(rows[0][0])
        except psycopg.OperationalError:
            return -1

    def run(self) -> Result:
        cfg, n = self.cfg, self.cfg.workflows
        print(f"chaos run: seed {self.seed}, {n} workflows, schema {self.schema}", flush=True)
        t_start = time.monotonic()
        self.setup()
        assert self.env is not None
        self.t0 = time.monotonic()
        for i in range(n):
            self.ns.wf.start(i, n, workflow_id=wid(i, n))
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        pace = 0.6 * cfg.fault_window / max(1, n // cfg.producers)
        shares = [list(range(p, n, cfg.producers)) for p in range(cfg.producers)]
        procs = [
            ctx.Process(target=_producer, args=(self.env.vars(), s, n, self.seed + p, pace, out))
            for p, s in enumerate(shares)
        ]
        for p in procs:
            p.start()
        self.inject(self.t0 + cfg.fault_window, lambda: self.unfinished() == 0)
        # heal: every process up again, then wait for the workload
        self.pg.ensure_started()
        if not self.redis.alive():
            self.redis.start()
        self.supervise()
        t_heal = time.monotonic()
        deadline = t_heal + cfg.finish_timeout
        while self.unfinished() != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            self.supervise()
        t_done = time.monotonic()
        sends = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        return self.check(sends, t_start, t_heal, t_done)

    # --- invariants ---------------------------------------------------------------

    def check(
        self, sends: list[tuple[int, int, int]], t_start: float, t_heal: float, t_done: float
    ) -> Result:
        n = self.cfg.workflows
        res = Result(self.seed)
        v = res.violations
        ser = self.ns.durable.services.codec
        rows = self.lib_sql("SELECT id, status, output, recovery_attempts FROM {schema}.workflows")
        by_id = {r[0]: r for r in rows}
        statuses: Counter[str] = Counter(r[1] for r in rows)
        for i in range(n):
            r = by_id.get(wid(i, n))
            if r is None:
                v.append(f"{wid(i, n)}: missing")
            elif r[1] != "SUCCESS":
                v.append(f"{wid(i, n)}: status {r[1]} (stuck or failed): {self.describe(r[0])}")
            elif ser.loads(r[2]) != expected(i, n):
                v.append(f"{wid(i, n)}: result {ser.loads(r[2])!r} != {expected(i, n)!r}")
        left = self.lib_sql("SELECT destination_id, topic FROM {schema}.messages")
        if left:
            v.append(f"{len(left)} messages never consumed (or stored twice): {left[:5]}")
        keys = self.lib_sql("SELECT count(*) FROM {schema}.send_keys")[0][0]
        if keys != 2 * n:
            v.append(f"{keys} idempotency keys stored, expected {2 * n}")
        # side effects: ledger rows (shared server) against checkpoint commit times
        done_at = {
            (w, name): float(at)
            for w, name, at in self.lib_sql(
                "SELECT workflow_id, name, extract(epoch from created_at) FROM {schema}.steps"
            )
        }
        # a call's outcome record (not its dispatch record, written before the task runs)
        call_name = {w: name for (w, name) in done_at if name == "durable.call:chaos.t.effect"}
        runs: Counter[tuple[str, str]] = Counter()
        late = late_copies = 0
        for w, what, at in self.ledger.sql("SELECT workflow_id, what, at FROM {schema}.ledger"):
            runs[(w, what)] += 1
            name = call_name.get(w, "") if what == "call" else f"chaos.{what}"
            committed = done_at.get((w, name))
            if committed is None or float(at) <= committed:
                continue
            if what == "call" and float(at) - committed <= CALL_REVOKE_WINDOW:
                # a copy of the task sent again while the first was only
                # late, started before its worker saw the outcome and
                # revoked it: tasks are at-least-once (README)
                late_copies += 1
                continue
            late += 1
            v.append(f"{w}: {what} ran {float(at) - committed:.2f} s after its checkpoint")
        reruns = Counter[str]()
        for i in range(n):
            for what in (*STEPS, "call"):
                c = runs[(wid(i, n), what)]
                if c == 0:
                    v.append(f"{wid(i, n)}: {what} never ran")
                reruns[what] += max(0, c - 1)
        recoveries = sum(int(r[3]) for r in rows)
        sent = sum(s[0] for s in sends)
        res.rows = [
            ("seed", str(self.seed)),
            ("workflows", f"{n} ({', '.join(f'{k} {c}' for k, c in sorted(statuses.items()))})"),
            ("messages", f"{sent} sent by producers (+{sum(s[1] for s in sends)} repeated "
                         f"with the same key, {sum(s[2] for s in sends)} failed tries retried), "
                         f"{n} workflow-to-workflow; {len(left)} left over"),
            ("faults", ", ".join(f"{k} {c}" for k, c in sorted(self.faults.items()))),
            ("worker crashes", f"{self.crashes} (Celery worker died of a fault; restarted)"),
            ("recoveries", f"{recoveries} (sum of recovery_attempts)"),
            ("re-runs before checkpoint", ", ".join(f"{k} {c}" for k, c in sorted(reruns.items()))),
            ("re-runs after checkpoint", f"{late} (+{late_copies} late call copies started "
                                         f"within {CALL_REVOKE_WINDOW:g} s of the outcome)"),
            ("invariants", "OK" if not v else f"{len(v)} VIOLATED"),
            ("wall time", f"{t_done - t_start:.1f} s (faults {t_heal - self.t0:.1f} s, "
                          f"then {t_done - t_heal:.1f} s to finish)"),
        ]  # fmt: skip
        return res


def _signal_group(w: WorkerProcess, sig: signal.Signals) -> None:
    try:
        os.killpg(w.proc.pid, sig)
    except ProcessLookupError:  # killed (and replaced) meanwhile
        pass


def run(cfg: Config) -> Result:
    chaos = Chaos(cfg)
    try:
        result = chaos.run()
    finally:
        chaos.teardown()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default_n = int(os.environ.get("DBOS_CHAOS_WORKFLOWS", "200"))
    p.add_argument("--workflows", type=int, default=default_n)
    p.add_argument("--producers", type=int, default=2)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--fault-window", type=float, default=None)
    a = p.parse_args(argv)
    window = a.fault_window if a.fault_window is not None else max(35.0, a.workflows / 10)
    cfg = Config(a.workflows, a.producers, seed=a.seed, fault_window=window,
                 finish_timeout=max(120.0, a.workflows / 5))  # fmt: skip
    result = run(cfg)
    print(result.table(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
