"""Deprecated path (until the next release): moved to repvit.tools.published."""

from .tools.published import peer_names, published, published_peer, source_text
from .utils.deprecation import warn_moved

__all__ = ["peer_names", "published", "published_peer", "source_text"]

warn_moved("repvit.published", "repvit.tools.published")
