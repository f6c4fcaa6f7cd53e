"""Lazy package attributes: names a package exports but imports only when first asked for (torch, matplotlib)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, table: Mapping[str, tuple[str, str]]) -> Callable[[str], object]:
    """A module `__getattr__` that answers each name of `table` (name -> (module, attribute)) by importing it."""

    def __getattr__(name: str) -> object:
        if name in table:
            module, attr = table[name]
            return getattr(importlib.import_module(module), attr)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
