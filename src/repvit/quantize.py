"""Deprecated path (until the next release): moved to repvit.export and repvit.data."""

from .data import ImageSet, calibration_and_held_out, calibration_images, image_set
from .data import batch_samples as loader_samples
from .export import (
                     INT8_FORMATS,
                     evaluate_artifact,
                     export_executorch_int8,
                     export_onnx_int8,
                     format_quantize_eval,
                     quantize_eval,
)
from .export.executorch import quantize_xnnpack, xnnpack_quantizer
from .utils.deprecation import warn_moved

__all__ = ["INT8_FORMATS", "ImageSet", "calibration_and_held_out", "calibration_images", "evaluate_artifact",
           "export_executorch_int8", "export_onnx_int8", "format_quantize_eval", "image_set",
           "loader_samples", "quantize_eval", "quantize_xnnpack", "xnnpack_quantizer"]

warn_moved("repvit.quantize", "repvit.export and repvit.data")
