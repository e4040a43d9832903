"""``python -m examples.saga``: the same as ``python -m examples.saga.app``."""

import sys

from examples.saga.app import main

sys.exit(main())
