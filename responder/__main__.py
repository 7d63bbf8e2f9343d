"""``python -m responder``: the same as the ``responder`` command."""

import sys

from .cli import main

sys.exit(main())
