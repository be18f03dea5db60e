"""The package version (read by pyproject.toml and ``repvit --version``) and installed versions."""

import contextlib
from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__", "package_versions"]

__version__ = "0.1.0"


def package_versions(packages) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names); those not installed are left out."""
    found = {}
    for package in packages:
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found
