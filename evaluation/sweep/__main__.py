"""`python -m evaluation.sweep SPEC.json ...`: see evaluation.sweep.cli."""

import sys

from evaluation.sweep.cli import main

sys.exit(main())
