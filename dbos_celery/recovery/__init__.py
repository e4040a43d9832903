"""Recovery: liveness (``heartbeat``: each process's heartbeat and what it
holds) and the cluster-wide ``sweep`` that re-publishes what was lost."""
