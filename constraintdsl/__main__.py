"""``python -m constraintdsl`` is ``cdsl``."""

import sys

from constraintdsl.cli.app import main

sys.exit(main())
