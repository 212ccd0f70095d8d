"""``python -m glancefocus.cli``: the ``glancefocus`` command (torchrun launches it this way)."""

import sys

from . import main

sys.exit(main())
