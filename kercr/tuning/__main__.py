"""``python -m kercr.tuning``: the same as ``kercr-tune``."""

import sys

from kercr.cli.tune import main

sys.exit(main())
