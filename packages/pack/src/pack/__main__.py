"""``python -m pack`` is ``lmstack``."""

from pack.cli import main

raise SystemExit(main())
