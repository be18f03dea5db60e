"""Deprecated path (until the next release): re-exports the modules named below."""

from .data.folders import batch_samples as loader_samples
from .utils.deprecation import reexport

__all__ = reexport(globals(), "repvit.quantize", "repvit.data.calibration", "repvit.data.folders",
                   "repvit.export.driver", "repvit.export.executorch", "repvit.export.int8", "repvit.export.onnx",
                   "repvit.export.parity")

__all__ += ["loader_samples"]
