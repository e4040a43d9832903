"""Send the approver's decision to a waiting expense request.

    python examples/approval/approve.py <request_id> approve|reject

Uses the same settings (environment) as app.py. A worker of the app must be
running to carry the workflow on (a real broker: BROKER_URL set).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: import the app from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dbos_celery import NonExistentWorkflowError  # noqa: E402
from examples.approval.app import decide  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("approve", "reject"):
        print("usage: approve.py <request_id> approve|reject", file=sys.stderr)
        return 2
    request_id, decision = argv
    try:
        decide(request_id, decision)
    except NonExistentWorkflowError:
        print(f"approve.py: no request {request_id!r}", file=sys.stderr)
        return 1
    print(f"{request_id}: {decision} sent")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
