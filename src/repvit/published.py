"""Published numbers (paper tables, official READMEs), loaded from ``data/published.yaml``."""

from __future__ import annotations

import functools
from importlib import resources

import yaml

__all__ = ["published", "published_sources"]


@functools.lru_cache(maxsize=None)
def _load() -> dict:
    text = resources.files("repvit").joinpath("data/published.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def published(name: str) -> dict:
    """The published entry for a model (empty dict when none is recorded)."""
    return dict(_load()["models"].get(name, {}))


def published_sources() -> dict[str, str]:
    return dict(_load()["sources"])
