"""Export to the runtimes phones use, always from the reparameterized model, always checked.

One table, :data:`FORMATS` (:mod:`.formats`), keyed by name; one module per runtime owns its
export, its loader and its int8 writer: :mod:`.onnx` (ONNX Runtime), :mod:`.executorch`
(XNNPACK), :mod:`.coreml`, :mod:`.litert`, :mod:`.ncnn`, :mod:`.openvino`. :func:`export`
(:mod:`.driver`) writes, reloads and compares; :mod:`.parity` holds the comparisons and
:mod:`.int8` the fp32-vs-int8 evaluation (``repvit quantize-eval``).
"""

from .common import INPUT_NAME, OUTPUT_NAME, ExportError, ParitySkipped, captured_output
from .coreml import export_coreml, import_coremltools, load_coreml, require_macos, save_mlpackage
from .driver import INT8_FORMATS, ExportResult, export
from .executorch import export_executorch, export_executorch_int8, load_executorch, set_executorch_threads
from .formats import FORMAT_ALIASES, FORMATS, RUNTIME_PACKAGES, ExportFormat, check_formats
from .int8 import format_quantize_eval, quantize_eval
from .litert import export_litert, load_litert
from .ncnn import NCNN_FILES, export_ncnn, load_ncnn
from .onnx import export_onnx, export_onnx_int8, load_onnx
from .openvino import export_openvino, load_openvino
from .parity import INT8_MIN_COSINE, evaluate_artifact, parity_tolerance

__all__ = ["ExportFormat", "ExportResult", "FORMATS", "FORMAT_ALIASES", "RUNTIME_PACKAGES", "INT8_FORMATS", "export",
           "check_formats", "export_onnx", "export_executorch", "export_coreml", "export_litert", "export_ncnn",
           "export_openvino", "export_onnx_int8", "export_executorch_int8", "load_onnx", "load_executorch",
           "load_coreml", "load_litert", "load_ncnn", "load_openvino", "import_coremltools", "require_macos",
           "save_mlpackage", "set_executorch_threads", "parity_tolerance", "evaluate_artifact", "INT8_MIN_COSINE",
           "quantize_eval", "format_quantize_eval", "ExportError", "ParitySkipped", "INPUT_NAME", "OUTPUT_NAME",
           "NCNN_FILES", "captured_output"]
