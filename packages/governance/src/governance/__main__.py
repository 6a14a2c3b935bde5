"""``python -m governance ...``: see :mod:`governance.cli`."""

import sys

from governance.cli import main

sys.exit(main())
