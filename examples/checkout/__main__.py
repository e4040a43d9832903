"""``python -m examples.checkout``: the same as ``python -m examples.checkout.app``."""

import sys

from examples.checkout.app import main

sys.exit(main())
