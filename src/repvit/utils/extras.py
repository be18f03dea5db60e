"""Optional extras: which third-party modules are missing, and the install line that adds them."""

from __future__ import annotations

import importlib.util

from .errors import UserError

__all__ = ["missing_modules", "missing_extra", "require_extra"]


def missing_modules(modules) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (none are imported to find out)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def missing_extra(modules, extra: str) -> str | None:
    """``"missing package a, b: pip install 'repvit-toolkit[extra]'"`` when some are missing, else None."""
    missing = missing_modules(modules)
    return f"missing package {', '.join(missing)}: pip install 'repvit-toolkit[{extra}]'" if missing else None


def require_extra(modules, extra: str) -> None:
    """Raise a :class:`UserError` saying :func:`missing_extra`'s one line when some of ``modules`` are
    missing (the command line prints it and exits 2, no traceback)."""
    missing = missing_extra(modules, extra)
    if missing:
        raise UserError(missing)
