"""Dense prediction on RepViT backbones: detection and instance segmentation (torchvision's Mask
R-CNN, Faster R-CNN, RetinaNet; COCO AP) and semantic segmentation (Semantic FPN; mIoU), trained by
one iteration-based loop (:mod:`.loop`) on the same process/step/checkpoint layer as classification."""

from ..train.process import all_gather_objects, sample_generator
from ..utils.deprecation import forward_moved
from .detection import (
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
from .loop import DenseRecipe, DenseTask, freeze_backbone_norm, read_dense_checkpoint, restore_dense_model, train_dense
from .segmentation import (
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

__all__ = ["DenseRecipe", "DenseTask", "train_dense", "freeze_backbone_norm", "read_dense_checkpoint",
           "restore_dense_model", "DetectRecipe", "RepViTFPN", "CocoDataset", "DetectionTask", "build_detector",
           "coco_evaluate", "train_detector", "load_detector", "predict_detections", "SegmentRecipe", "SemanticFPN",
           "SegmentationFolder", "SegmentationTask", "build_segmenter", "segmentation_metrics", "load_segmenter",
           "predict_segmentation", "train_segmenter", "infer", "sample_generator", "all_gather_objects"]

#: A private name the previous release listed in ``__all__`` (deprecated, one release).
__getattr__ = forward_moved(__name__, {"_all_reduce_sum": "repvit.train.process:all_reduce_sum"})
