"""``python -m responder`` is the ``responder`` command."""

import sys

from .cli import main

sys.exit(main())
