"""Data: the paper's transforms, ImageFolder trees (checked, unreadable images skipped), samplers,
calibration image sets, and generated datasets (the embedded digits, coloured shapes for the dense
tasks). ``published.yaml`` beside this file holds the published numbers (:mod:`repvit.tools.published`)."""

from .calibration import ImageSet, calibration_and_held_out, calibration_images, image_set, resolve_image_source
from .digits import make_digits_image_folder
from .folders import (
    IMG_EXTENSIONS,
    DatasetError,
    SkippingImageFolder,
    batch_samples,
    check_image_folder,
    collate_skipping,
    image_files,
)
from .samplers import ResumeSampler, ShardSampler
from .synthetic import SHAPES, make_shapes_coco, make_shapes_segmentation, shapes_scene
from .transforms import (
    EVAL_CROP_PCT,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    eval_transform,
    imagenet_class_names,
    load_image,
    train_transform,
)

__all__ = [
    # transforms
    "EVAL_CROP_PCT", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "eval_transform", "train_transform",
    "imagenet_class_names", "load_image",
    # folders and samplers
    "DatasetError", "IMG_EXTENSIONS", "check_image_folder", "image_files", "SkippingImageFolder", "collate_skipping",
    "batch_samples", "ShardSampler", "ResumeSampler",
    # calibration images
    "ImageSet", "image_set", "calibration_images", "calibration_and_held_out", "resolve_image_source",
    # generated data
    "make_digits_image_folder", "SHAPES", "shapes_scene", "make_shapes_coco", "make_shapes_segmentation",
]
