"""PEP 562 lazy exports, shared by ``glancefocus`` and ``glancefocus.runtime``: a name is
imported from its module on first use, so importing a package imports none of its parts."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], names: Callable[[], list[str]]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose name ``n`` lives in ``.exports[n]``;
    ``names()`` gives the package's own globals."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{exports[name]}", package), name)

    def __dir__() -> list[str]:
        return sorted([*names(), *exports])

    return __getattr__, __dir__
