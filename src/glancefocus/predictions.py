"""Former home of :mod:`glancefocus.runtime.predictions`; the same module under its old name."""

import sys

from .runtime import predictions

sys.modules[__name__] = predictions
