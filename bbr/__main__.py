"""``python -m bbr``: the body-based router (see :mod:`bbr.cli` for the flags)."""

import sys

from bbr.cli import main

sys.exit(main())
