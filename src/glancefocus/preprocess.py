"""Former home of :mod:`glancefocus.runtime.preprocess`; the same module under its old name."""

import sys

from .runtime import preprocess

sys.modules[__name__] = preprocess
