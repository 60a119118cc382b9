"""``python -m omnifuse <verb>``: the same command line as ``omnifuse <verb>``."""

import sys

from omnifuse.cli import main

sys.exit(main())
