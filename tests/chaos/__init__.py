"""A Jepsen-style chaos harness: a workload of durable workflows under
worker kills, Redis restarts and flushes, Postgres session kills and a
Postgres restart; invariants checked from Postgres and the ledger.

    python -m tests.chaos.harness [--workflows N] [--seed S]
"""
