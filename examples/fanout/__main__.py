"""``python -m examples.fanout``: the same as ``python -m examples.fanout.app``."""

import sys

from examples.fanout.app import main

sys.exit(main())
