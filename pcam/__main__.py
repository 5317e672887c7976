"""`python -m pcam ...` is the same as the `pcam` console entry point."""

import sys

from pcam.cli import main

sys.exit(main())
