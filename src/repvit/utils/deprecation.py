"""Old import paths that keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings

__all__ = ["forward_moved", "warn_moved", "reexport"]


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path works until the next release", DeprecationWarning,
                  stacklevel=3)


def forward_moved(module: str, moved: dict[str, str]):
    """A module-level ``__getattr__`` for names that moved to a layer above ``module``.

    The new home is imported by name when the old name is used (never at import time, so the
    layering of the package is unchanged).
    """

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn_moved(f"{module}.{name}", f"{moved[name]}.{name}")
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__


def reexport(namespace: dict, old: str, *modules: str) -> list[str]:
    """Fill a deprecated module's ``namespace`` with the public names of the ``modules`` (dotted
    names) it moved to, warn, and return the names (its ``__all__``)."""
    names = {}
    for module in map(importlib.import_module, modules):
        names.update({name: getattr(module, name) for name in module.__all__})
    namespace.update(names)
    warn_moved(old, " and ".join(modules))
    return sorted(names)
