"""Run the daemon's command line: ``python -m editstore.server serve``."""

import sys

from editstore.server.cli import main

sys.exit(main())
