"""``python -m render [stack ...] [--out DIR]`` (``./dev render``): see :mod:`render.engine`."""

import sys

from render.engine import main

sys.exit(main())
