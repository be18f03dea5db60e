"""Optional extras: which third-party modules are missing, and the install line that adds them."""

from __future__ import annotations

import importlib.util

__all__ = ["missing_modules", "missing_extra"]


def missing_modules(modules) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (none are imported to find out)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def missing_extra(modules, extra: str) -> str | None:
    """``"missing package a, b: pip install 'repvit-toolkit[extra]'"`` when some are missing, else None."""
    missing = missing_modules(modules)
    return f"missing package {', '.join(missing)}: pip install 'repvit-toolkit[{extra}]'" if missing else None
