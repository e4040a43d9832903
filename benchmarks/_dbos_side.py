"""DBOS Transact's side of benchmarks/vs_dbos.py, run in a process of its
own (DBOS keeps global state): step overhead and send -> recv latency on
the same Postgres server, printed as JSON lists of seconds.

    python benchmarks/_dbos_side.py SYSTEM_DATABASE_URL STEPS MESSAGES SPACING
"""

from __future__ import annotations

import json
import sys
import time

from dbos import DBOS, DBOSConfig


def main() -> None:
    url, steps, messages, spacing = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    config: DBOSConfig = {"name": "vs_dbos", "system_database_url": url, "log_level": "WARNING"}
    DBOS(config=config)

    @DBOS.step()
    def trivial(i: int) -> int:
        return i + 1

    @DBOS.workflow()
    def stepper(n: int) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            trivial(i)
            out.append(time.perf_counter() - t0)
        return out

    @DBOS.workflow()
    def receiver(n: int) -> list[float]:
        lat = []
        for _ in range(n):
            m = DBOS.recv(timeout_seconds=60)
            lat.append(time.time() - m["t"])
        return lat

    DBOS.launch()
    try:
        stepper(20)  # warm
        step_times = stepper(steps)
        handle = DBOS.start_workflow(receiver, messages)
        time.sleep(0.5)  # blocked in recv
        due = time.perf_counter()
        for _ in range(messages):
            due += spacing
            while (left := due - time.perf_counter()) > 0:
                time.sleep(left if left > 0.002 else 0)
            DBOS.send(handle.workflow_id, {"t": time.time()})
        latencies = handle.get_result()
    finally:
        DBOS.destroy()
    print(json.dumps({"step": step_times, "wakeup": latencies}))


if __name__ == "__main__":
    main()
