"""``python -m constraintdsl`` is ``cdsl``."""

import sys

from .cli import main

sys.exit(main())
