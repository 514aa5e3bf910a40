"""``python -m npadam.cli ...`` is the ``npadam`` command."""

import sys

from . import main

sys.exit(main())
