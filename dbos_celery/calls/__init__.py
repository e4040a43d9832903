"""durable.call: existing Celery tasks as durable steps, and durable.gather.

``dispatch``: the workflow side (send, wait, send again); ``outcome``: the
task side (Celery signal receivers writing the start marker and outcome).

A call dispatches a Celery task of the app to the cluster, waits for it and
returns its result (or raises its exception). It takes two sequence numbers:

- ``seq + 1``, the dispatch record (``durable.dispatch:<task name>``),
  written by the workflow before it publishes the task. It holds the Celery
  task id, ``dbos-{workflow_id}-{seq}``, so every dispatch of this call,
  first or repeated, carries the same id. The worker that runs the task
  marks the record with its process (executor id) when the task starts.
- ``seq``, the outcome (``durable.call:<task name>``), written by the worker
  that ran the task, from Celery's ``task_success`` / ``task_failure``
  signals: no result backend is involved. Written once (a duplicate run
  writes nothing) and only where the dispatch record exists. The waiting
  workflow is woken through the notifier and polls every ``poll_interval``.

A replay returns a recorded outcome at once; finding only the dispatch
record, it waits for that same task rather than sending another. The task
is sent again, always with the same id, when no outcome is recorded and

- the process that started it stopped heartbeating (``worker_timeout``):
  the worker died mid-task, and with Celery's default early ack its message
  is gone; or
- no worker started it within ``call_redispatch_after`` seconds of its
  last dispatch (a message lost by the broker, a crash between the dispatch
  record and the publish, or prefetched by a worker that died), and then
  with exponential backoff.

So a task runs at least once, and more than once only after such a loss.

A wait longer than ``park_after`` (counted from the dispatch) parks the
workflow on the key ``t<SEP>{workflow_id}<SEP>`` (``keys.calls_key``): it is
ready when every dispatch record of the workflow has its outcome (a
workflow passes a call only once its outcome exists, so those without one
are the calls it waits for; a gather parks once, for all of them). The
worker that writes an outcome wakes the workflow when it is ready (the
recovery sweep also does). Its wake time keeps the re-dispatch rules: the
next re-send of a call not started, or ``call_redispatch_after`` from now
to look at the liveness of a worker running one; the woken run replays,
sends what is due (resuming the backoff from the dispatch record's age)
and parks again at once.
"""
