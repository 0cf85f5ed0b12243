"""Run the benchmarks: ``python -m bench``; ``python -m bench --help``."""

import sys

from bench.run import main

sys.exit(main())
