"""``python -m kercr.tuning``: the same as ``kercr-tune``."""

import sys

from kercr.tuning.cli import main

sys.exit(main())
