"""`python -m repvit.cli` runs the command-line interface (as `python -m repvit` and `repvit` do)."""

import sys

from . import main

sys.exit(main())
