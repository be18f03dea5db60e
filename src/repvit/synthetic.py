"""Deprecated path (until the next release): moved to repvit.data.synthetic."""

from .data.synthetic import SHAPES, make_shapes_coco, make_shapes_segmentation
from .utils.deprecation import warn_moved

__all__ = ["SHAPES", "make_shapes_coco", "make_shapes_segmentation"]

warn_moved("repvit.synthetic", "repvit.data.synthetic")
