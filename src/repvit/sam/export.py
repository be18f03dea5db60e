"""Export of RepViT-SAM: the image encoder (reparameterized) to each runtime, and the prompt decoder
to ONNX, each reloaded in its runtime and checked against PyTorch.

The exported encoder takes SAM's preprocessed image and returns the image embedding. The decoder
(``segment_anything``'s prompt encoder and mask decoder, as its ``SamOnnxModel`` traces them) takes
that embedding and any number of points, and returns SAM's four mask candidates at 256x256 (for a
1024 input) with their predicted IoU; upscaling to the original image is left to the application
(as ``Sam.postprocess_masks`` does it): the exporter's data-dependent resize to the original size
did not match PyTorch in ONNX Runtime here. The JSON files written beside them say exactly how
to feed them: pixel coordinates in the resized image, label 1 foreground, 0 background, 2 and 3 a
box's top-left and bottom-right corners, -1 padding (the upstream question #91).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..export import FORMATS, export
from .model import EMBED_DIM, PATCH, create_sam

__all__ = ["export_sam_encoder", "export_sam_decoder", "ENCODER_NAME", "DECODER_NAME"]

ENCODER_NAME, DECODER_NAME = "repvit_sam_encoder", "repvit_sam_decoder"
_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
_DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")


def export_sam_encoder(weights="repvit_sam", formats=("onnx", "executorch"), out_dir="exports", img_size: int = 1024,
                       sam=None):
    """Export the fused encoder to each format (see :func:`repvit.export.export`); returns its results
    and writes ``repvit_sam_encoder.json`` (how to feed each file, what it returns) into ``out_dir``;
    each file's own ``<file>.json`` says the same (not the classifiers' ImageNet preprocessing)."""
    sam = create_sam(weights, img_size=img_size) if sam is None else sam  # ``sam``: already built from ``weights``
    encoder = sam.image_encoder  # export() exports a reparameterized copy
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


def export_sam_decoder(weights="repvit_sam", out_dir="exports", img_size: int = 1024, tolerance: float = 1e-4,
                       sam=None) -> dict:
    """The prompt decoder as ONNX (a variable number of points, an optional mask input, any original
    image size), reloaded in ONNX Runtime and compared with PyTorch on several prompts; writes
    ``repvit_sam_decoder.onnx`` and ``repvit_sam_decoder.json`` (how to feed it); returns the check."""
    import onnxruntime
    from segment_anything.utils.onnx import SamOnnxModel

    class PromptDecoder(SamOnnxModel):
        """Prompts -> (IoU predictions, low-resolution mask logits), without the resize to the original size."""

        def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
            masks, scores = self.model.mask_decoder.predict_masks(
                image_embeddings=image_embeddings, image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
                dense_prompt_embeddings=self._embed_masks(mask_input, has_mask_input))
            return scores, masks

    sam = create_sam(weights, img_size=img_size) if sam is None else sam  # ``sam``: already built from ``weights``
    decoder = PromptDecoder(sam, return_single_mask=False).eval()
    grid = img_size // PATCH
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{DECODER_NAME}.onnx"
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, EMBED_DIM, grid, grid, generator=generator)
    example = _decoder_inputs(embedding, torch.tensor([[[0.3, 0.4], [0.6, 0.5], [0.7, 0.8]]]) * img_size,
                              torch.tensor([[1.0, 0.0, 1.0]]), None)
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    with torch.no_grad():
        torch.onnx.export(decoder, example, str(path), input_names=list(_DECODER_INPUTS),
                          output_names=list(_DECODER_OUTPUTS), dynamic_axes=dynamic, opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prompts = {  # (coordinates as fractions of the side, labels, a mask input?)
        "one point": ([[0.5, 0.5]], [1], False),
        "two points, one background": ([[0.3, 0.4], [0.8, 0.2]], [1, 0], False),
        "box (labels 2, 3)": ([[0.2, 0.3], [0.7, 0.9]], [2, 3], False),
        "five points": ([[0.1, 0.1], [0.2, 0.9], [0.5, 0.5], [0.9, 0.3], [0.6, 0.7]], [1, 1, 0, 1, 0], False),
        "point with a mask input": ([[0.6, 0.6]], [1], True),
    }
    checks = {}
    for name, (coords, labels, with_mask) in prompts.items():
        mask = torch.randn(1, 1, 4 * grid, 4 * grid, generator=generator) if with_mask else None
        inputs = _decoder_inputs(embedding, torch.tensor([coords]) * img_size, torch.tensor([labels]), mask)
        with torch.no_grad():
            reference = decoder(*inputs)
        ours = session.run(None, {k: v.numpy() for k, v in zip(_DECODER_INPUTS, inputs)})
        diff = max(float((torch.from_numpy(o) - r).abs().max()) for o, r in zip(ours, reference))
        a, b = torch.from_numpy(ours[1]) > 0, reference[1] > 0
        iou = float((a & b).sum() / (a | b).sum().clamp(min=1))
        checks[name] = {"max_abs_diff": diff, "mask_iou": iou, "masks_shape": list(ours[1].shape)}
    ok = all(c["max_abs_diff"] <= tolerance * 10 and c["mask_iou"] >= 0.99 for c in checks.values())
    info = {
        "model": DECODER_NAME, "weights": str(weights), "file": str(path), "status": "ok" if ok else "parity failed",
        "inputs": {
            "image_embeddings": f"float32 [1, {EMBED_DIM}, {grid}, {grid}]: the encoder's output",
            "point_coords": "float32 [1, N, 2]: (x, y) in the pixels of the image resized for the encoder (longer "
                            f"side {img_size}): multiply original coordinates by {img_size} / max(height, width); "
                            "a box is two points, its top-left and bottom-right corners",
            "point_labels": "float32 [1, N]: 1 foreground point, 0 background point, 2 box top-left, 3 box "
                            "bottom-right, -1 padding (add one (0, 0) point with label -1 when there is no box, "
                            "as SAM's own ONNX example does)",
            "mask_input": f"float32 [1, 1, {4 * grid}, {4 * grid}]: a previous low_res_masks output, or zeros",
            "has_mask_input": "float32 [1]: 1 when mask_input holds a previous mask, else 0",
        },
        "outputs": {
            "iou_predictions": "float32 [1, 4]: the predicted IoU of each mask",
            "low_res_masks": f"float32 [1, 4, {4 * grid}, {4 * grid}]: mask logits (> 0: inside); index 0 is "
                             "SAM's single-mask output, 1-3 the three multimask candidates; feed one back as "
                             "mask_input",
        },
        "postprocessing": f"upscale low_res_masks bilinearly to {img_size}x{img_size}, crop the top-left part that "
                          "holds the resized image, resize that bilinearly to the original (height, width), "
                          "threshold at 0 (segment_anything's Sam.postprocess_masks)",
        "checks": checks,
    }
    (out / f"{DECODER_NAME}.json").write_text(json.dumps(info, indent=2))
    return info


def _decoder_inputs(embedding, coords, labels, mask) -> tuple:
    grid = embedding.shape[-1]
    return (embedding, coords.float(), labels.float(),
            mask if mask is not None else torch.zeros(1, 1, 4 * grid, 4 * grid),
            torch.tensor([1.0 if mask is not None else 0.0]))
