"""Entry point of ``python -m backbone``."""

import sys

from backbone.cli import main

sys.exit(main())
