"""``python -m epp``: run the endpoint picker (see ``epp.cli`` for the flags)."""

import sys

from epp.cli import main

sys.exit(main())
