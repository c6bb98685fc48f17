"""`python -m conformance.cli`: the `conformance` command."""

import sys

from .main import main

sys.exit(main())
