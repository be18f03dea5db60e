"""Deprecated path (until the next release): moved to repvit.dense.segmentation."""

from .dense.segmentation import (
                                 SegmentationFolder,
                                 SegmentationTask,
                                 SegmentRecipe,
                                 SemanticFPN,
                                 build_segmenter,
                                 infer,
                                 load_segmenter,
                                 predict_segmentation,
                                 segmentation_metrics,
                                 train_segmenter,
)
from .utils.deprecation import warn_moved

__all__ = ["SegmentRecipe", "SegmentationFolder", "SegmentationTask", "SemanticFPN", "build_segmenter",
           "infer", "load_segmenter", "predict_segmentation", "segmentation_metrics", "train_segmenter"]

warn_moved("repvit.segmentation", "repvit.dense.segmentation")
