"""Old import paths that keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import functools
import importlib
import warnings

__all__ = ["forward_moved", "warn_moved", "reexport", "renamed_keyword"]


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path works until the next release", DeprecationWarning,
                  stacklevel=3)


def forward_moved(module: str, moved: dict[str, str]):
    """A module-level ``__getattr__`` for names that moved to another module: ``moved`` maps an old
    name to ``"new.module"`` (same name there) or ``"new.module:new_name"``.

    The new home is imported by name when the old name is used (never at import time, so the
    layering of the package is unchanged).
    """

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, new_name = moved[name].partition(":")
        warn_moved(f"{module}.{name}", f"{target}.{new_name or name}")
        return getattr(importlib.import_module(target), new_name or name)

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


def renamed_keyword(old: str, new: str, attribute: bool = False):
    """A class decorator: the constructor still takes ``old=`` (meaning ``new=``, with a
    DeprecationWarning); with ``attribute``, ``obj.old`` still reads ``obj.new``."""

    def decorate(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            if old in kwargs:
                warnings.warn(f"{cls.__name__}({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        if attribute:
            setattr(cls, old, property(lambda self: getattr(self, new), doc=f"Deprecated name of ``{new}``."))
        return cls

    return decorate
