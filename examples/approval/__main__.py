"""``python -m examples.approval``: the same as ``python -m examples.approval.app``."""

import sys

from examples.approval.app import main

sys.exit(main())
