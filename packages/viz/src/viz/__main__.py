"""``python -m viz plot RUN_DIR -o curves.png`` (see :mod:`viz.cli`)."""

import sys

from viz.cli import main

if __name__ == "__main__":
    sys.exit(main())
