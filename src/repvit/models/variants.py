"""The RepViT variants, registered on import: one :class:`~repvit.specs.RepViTSpec` each.

Widths and depths from the official configs (THU-MIG/RepViT model/repvit.py), in the paper's depth
convention: blocks *after* each downsampling layer; every downsampling layer also owns one RepViT
block at the previous width.
"""

from __future__ import annotations

from ..specs import RepViTSpec
from .registry import Variant, register_variant

_W48, _W64 = (48, 96, 192, 384), (64, 128, 256, 512)

VARIANTS = (
    Variant("repvit_m0_6", RepViTSpec((40, 80, 160, 320), (1, 1, 8, 1)), "RepViT-M0.6", "v2",
            notes="added to the official release in Dec 2023; not in the paper's tables"),
    Variant("repvit_m0_9", RepViTSpec(_W48, (2, 2, 14, 2)), "RepViT-M0.9", "v2",
            notes="the end point of the paper's roadmap"),
    Variant("repvit_m1_0", RepViTSpec((56, 112, 224, 448), (2, 2, 14, 2)), "RepViT-M1.0", "v2"),
    Variant("repvit_m1_1", RepViTSpec(_W64, (2, 2, 12, 2)), "RepViT-M1.1", "v2"),
    Variant("repvit_m1_5", RepViTSpec(_W64, (4, 4, 24, 4)), "RepViT-M1.5", "v2"),
    Variant("repvit_m2_3", RepViTSpec((80, 160, 320, 640), (6, 6, 34, 2)), "RepViT-M2.3", "v2"),
    Variant("repvit_m1", RepViTSpec(_W48, (2, 2, 14, 2), legacy=True), "RepViT-M1", "v1",
            notes="first version; same architecture as M0.9 with the legacy token mixer"),
    Variant("repvit_m2", RepViTSpec(_W64, (2, 2, 12, 2), legacy=True), "RepViT-M2", "v1",
            notes="first version; same architecture as M1.1 with the legacy token mixer"),
    Variant("repvit_m3", RepViTSpec(_W64, (4, 4, 18, 2), legacy=True), "RepViT-M3", "v1",
            notes="first version; dropped in the CVPR version"),
)
for _variant in VARIANTS:
    register_variant(_variant)
