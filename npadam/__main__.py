"""``python -m npadam ...`` runs the ``npadam`` command line (same as the console script)."""

import sys

from npadam.cli import main

sys.exit(main())
