"""Public names of a package that live in its modules, imported on first use.

A sub-package lists what it offers as ``{module: [names]}``; ``from deepssim.audit import
verify_pair`` then imports ``deepssim.audit.verify`` only when the name is asked for, so
importing a package (and the CLI's ``--help``) does not pull in torch, DuckDB or MONAI.
"""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, modules: dict[str, list[str]]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """(``__getattr__``, ``__dir__``, ``__all__``) for ``package``."""
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(home)

    return __getattr__, __dir__, sorted(home)
