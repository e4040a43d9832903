"""Every table and SQL statement of dbos_celery, one module per table group.

- ``engine``: the pool, transactions, retries, SQLite glue (``Database``)
- ``dialect``: the SQL functions that differ between Postgres and SQLite
- ``tables``, ``migrations``: the schema and its versions
- ``common``: row types and the clauses the groups share (the lease)
- ``workflows``: start, read, list, claim, finish, cancel, resume, fork
- ``steps``: checkpoints and the records of durable.calls
- ``messages``: messages and events
- ``parking``: park and wake
- ``workers``: heartbeats, liveness and the recovery sweep

Each statement is a small function taking an ``Executor``; run one with
``Database.now(fn, ...)`` or several in one transaction with ``Database.run``.
"""
