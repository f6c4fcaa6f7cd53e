"""`python -m bench` (from the repository root): run every benchmark and render docs/benchmarks.md.

    python -m bench                      # the default size: under 20 minutes on a quiet 2-core CPU
    python -m bench --quick              # a smoke run of a few minutes
    python -m bench --only metrics,lengthgen
    python -m bench --report-only        # re-render docs/benchmarks.md from bench/results/*.json
"""

import sys

from bench.suite import main

sys.exit(main())
