"""Published numbers (paper tables, official READMEs), loaded from ``data/published.yaml``.

Nothing here is measured by this package; whatever shows these numbers labels them "published".
"""

from __future__ import annotations

import functools
from importlib import resources

import yaml

__all__ = ["published", "published_peer", "peer_names", "source_text"]


@functools.lru_cache(maxsize=None)
def _load() -> dict:
    text = resources.files("repvit").joinpath("data/published.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def published(name: str) -> dict:
    """The published entry for a RepViT variant (empty dict when none is recorded)."""
    return dict(_load()["models"].get(name, {}))


def published_peer(name: str) -> dict:
    """The published entry for a peer model (timm name; ``timm:``-prefixed for timm's RepViT)."""
    return dict(_load()["peers"].get(name, {}))


def peer_names() -> list[str]:
    """The default peer models of ``repvit bench``, in the data file's order."""
    return list(_load()["peers"])


def source_text(key: str | None) -> str | None:
    """The full citation behind a source key of the data file."""
    data = _load()
    return None if key is None else {**data["sources"], **data["peer_sources"]}.get(key, key)
