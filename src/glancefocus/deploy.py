"""Former home of :mod:`glancefocus.runtime.deploy`; the same module under its old name."""

import sys

from .runtime import deploy

sys.modules[__name__] = deploy
