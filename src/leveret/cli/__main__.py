"""`python -m leveret.cli ...`: the same as the `leveret` console script."""

import sys

from leveret.cli import main

sys.exit(main())
