"""Export of the RepViT-SAM image encoder, reparameterized, with parity checks in each runtime.

The exported encoder takes SAM's preprocessed image and returns the image embedding; the JSON
written beside the files says exactly how to prepare the input (the prompt decoder is exported
separately, as SAM does).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..export import FORMATS, export
from .model import EMBED_DIM, PATCH, create_sam

__all__ = ["export_sam_encoder", "ENCODER_NAME"]

ENCODER_NAME = "repvit_sam_encoder"


def export_sam_encoder(weights="repvit_sam", formats=("onnx", "executorch"), out_dir="exports", img_size: int = 1024):
    """Export the fused encoder to each format (see :func:`repvit.export.export`); returns its results
    and writes ``repvit_sam_encoder.json`` (how to feed each file, what it returns) into ``out_dir``;
    each file's own ``<file>.json`` says the same (not the classifiers' ImageNet preprocessing)."""
    sam = create_sam(weights, deploy=True, img_size=img_size)
    encoder = sam.image_encoder
    encoder.name = ENCODER_NAME
    results = export(encoder, list(formats), img_size=img_size, out_dir=out_dir)
    grid = img_size // PATCH
    preparation = (f"RGB, resized so that its longer side is {img_size} (aspect ratio kept), normalised per channel "
                   "with mean [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375] on the 0-255 scale, then "
                   f"zero-padded at the bottom and right to {img_size}x{img_size} (segment_anything's Sam.preprocess)")
    output = {"shape": [1, EMBED_DIM, grid, grid], "meaning": "the image embedding: the image_embeddings input of "
                                                              "SAM's prompt encoder and mask decoder"}
    files = {}
    for r in results:
        input_name, output_name = FORMATS[r.format].io_names
        files[r.format] = {"path": r.path, "status": r.status, "parity": r.parity, "input_name": input_name,
                           "output_name": output_name}
        sidecar = Path(f"{r.path}.json") if r.path else None
        if sidecar is not None and sidecar.is_file():  # replace the classifier wording of the generic sidecar
            meta = json.loads(sidecar.read_text())
            meta["preprocessing"] = preparation
            meta["output"] = {"name": output_name, **output}
            sidecar.write_text(json.dumps(meta, indent=2))
    info = {"model": ENCODER_NAME, "weights": str(weights),
            "input": {"shape": [1, 3, img_size, img_size], "dtype": "float32", "preparation": preparation},
            "output": output, "files": files}
    (Path(out_dir) / f"{ENCODER_NAME}.json").write_text(json.dumps(info, indent=2))
    return results
