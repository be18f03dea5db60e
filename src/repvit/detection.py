"""Deprecated path (until the next release): moved to repvit.dense.detection."""

from .dense.detection import (
                              CocoDataset,
                              DetectionTask,
                              DetectRecipe,
                              RepViTFPN,
                              build_detector,
                              coco_evaluate,
                              load_detector,
                              predict_detections,
                              train_detector,
)
from .utils.deprecation import warn_moved

__all__ = ["CocoDataset", "DetectRecipe", "DetectionTask", "RepViTFPN", "build_detector", "coco_evaluate",
           "load_detector", "predict_detections", "train_detector"]

warn_moved("repvit.detection", "repvit.dense.detection")
