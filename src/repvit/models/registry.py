"""The model registry: every buildable network by name (variants and roadmap steps)."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from ..specs import NetSpec, RepViTSpec, as_net

__all__ = ["Variant", "register_variant", "get_variant", "list_models"]


@dataclass(frozen=True)
class Variant:
    """A registered architecture: its name, spec and where it comes from."""

    name: str
    spec: RepViTSpec | NetSpec
    paper_name: str
    version: str  # "v1" (first arXiv version), "v2" (CVPR 2024) or "roadmap"
    notes: str = ""

    @property
    def net(self) -> NetSpec:
        return as_net(self.spec)


_VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add a variant to the registry; a repeated name is an error, never a silent replacement."""
    if variant.name in _VARIANTS:
        raise ValueError(f"model {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def list_models(pattern: str = "*", roadmap: bool = False) -> list[str]:
    """Names of the RepViT variants, optionally filtered by an fnmatch pattern (``"repvit_m1*"``);
    ``roadmap=True`` lists the roadmap's intermediate models (:mod:`repvit.models.roadmap`) instead."""
    return sorted(n for n, v in _VARIANTS.items()
                  if fnmatch.fnmatch(n, pattern) and (v.version == "roadmap") == roadmap)


def get_variant(name: str) -> Variant:
    if name in _VARIANTS:
        return _VARIANTS[name]
    if "." in name and name.split(".", 1)[0] in _VARIANTS:
        arch = name.split(".", 1)[0]
        raise ValueError(
            f"{name!r} names a weight set, not a model; use create_model({arch!r}, weights={name!r})"
        )
    close = difflib.get_close_matches(name, list(_VARIANTS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")
