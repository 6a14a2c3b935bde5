"""``python -m corpus`` is ``python -m corpus.cli``."""

import sys

from corpus.cli import main

sys.exit(main())
