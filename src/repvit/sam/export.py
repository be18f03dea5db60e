"""Export of RepViT-SAM: the image encoder (reparameterized; fp32, and int8 for XNNPACK) and the
prompt decoder to each runtime, each reloaded there and checked against PyTorch.

The exported encoder takes SAM's preprocessed image and returns the image embedding. The decoder
(``segment_anything``'s prompt encoder and mask decoder, as its ``SamOnnxModel`` traces them) takes
that embedding and the points of a prompt, and returns SAM's four mask candidates at 256x256 (for a
1024 input) with their predicted IoU; upscaling to the original image is left to the application
(as ``Sam.postprocess_masks`` does it): the exporter's data-dependent resize to the original size
did not match PyTorch in ONNX Runtime here. ONNX, ExecuTorch and Core ML take any number of points;
LiteRT's converter needs fixed shapes, so its decoder has a fixed number of point slots (unused
ones padded with label -1). The JSON files written beside them say exactly how to feed them: pixel
coordinates in the resized image, label 1 foreground, 0 background, 2 and 3 a box's top-left and
bottom-right corners, -1 padding (the upstream question #91).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import image_files, load_image, shapes_scene
from ..export import (
    FORMATS,
    ParitySkipped,
    captured_output,
    export,
    export_executorch,
    export_litert,
    import_coremltools,
    load_executorch,
    load_litert,
    load_onnx,
    require_macos,
    save_mlpackage,
)
from ..reparam import reparameterize
from ..utils import UserError, first_line, param
from .model import EMBED_DIM, PATCH, create_sam, random_sam, sam_input

__all__ = ["export_sam_encoder", "export_sam_decoder", "export_sam_encoder_int8", "prompt_decoder", "write_decoder",
           "load_decoder", "decoder_inputs", "prepare_images", "ENCODER_NAME", "DECODER_NAME", "DECODER_FORMATS"]

ENCODER_NAME, DECODER_NAME = "repvit_sam_encoder", "repvit_sam_decoder"
#: The formats the prompt decoder exports to (ncnn and OpenVINO take the encoder only).
DECODER_FORMATS = ("onnx", "executorch", "litert", "coreml")
_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
_DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")
_MAX_POINTS = 64  # the largest number of points the dynamic-shape decoders accept


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


def prompt_decoder(sam) -> nn.Module:
    """SAM's prompt encoder and mask decoder as one module of tensors: ``(image_embeddings,
    point_coords, point_labels, mask_input, has_mask_input) -> (iou_predictions, low_res_masks)``
    (see the module docstring; inputs as :func:`decoder_inputs` builds them)."""
    from segment_anything.utils.onnx import SamOnnxModel

    class PromptDecoder(SamOnnxModel):
        """Prompts -> (IoU predictions, low-resolution mask logits), without the resize to the original size."""

        def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
            masks, scores = self.model.mask_decoder.predict_masks(
                image_embeddings=image_embeddings, image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
                dense_prompt_embeddings=self._embed_masks(mask_input, has_mask_input))
            return scores, masks

    return PromptDecoder(sam, return_single_mask=False).eval()


def decoder_inputs(embedding: torch.Tensor, coords, labels, mask: torch.Tensor | None = None,
                   slots: int | None = None) -> tuple:
    """The decoder's five inputs for one prompt: ``coords`` (N, 2) in the resized image's pixels,
    ``labels`` (N,), an optional previous low-resolution mask; ``slots`` pads the points to that
    count with label -1 (the fixed-shape LiteRT decoder)."""
    coords = torch.as_tensor(coords, dtype=torch.float32).reshape(-1, 2)
    labels = torch.as_tensor(labels, dtype=torch.float32).reshape(-1)
    if slots is not None:
        if len(labels) > slots:
            raise UserError(f"a prompt of {len(labels)} points does not fit the decoder's {slots} point slots")
        coords = torch.cat([coords, torch.zeros(slots - len(labels), 2)])
        labels = torch.cat([labels, -torch.ones(slots - len(labels))])
    side = 4 * embedding.shape[-1]
    return (embedding, coords[None], labels[None], mask if mask is not None else torch.zeros(1, 1, side, side),
            torch.tensor([1.0 if mask is not None else 0.0]))


def write_decoder(fmt: str, decoder: nn.Module, example: tuple, path: Path) -> str:
    """Export the prompt decoder to ``path`` in ``fmt`` (one of :data:`DECODER_FORMATS`); ``example``
    as :func:`decoder_inputs` builds it (its point count is fixed for LiteRT only)."""
    points = torch.export.Dim("num_points", min=1, max=_MAX_POINTS)
    dynamic = ({}, {1: points}, {1: points}, {}, {})
    if fmt == "onnx":  # the legacy exporter: the dynamo one did not keep the point count dynamic here
        torch.onnx.export(decoder, example, str(path), input_names=list(_DECODER_INPUTS),
                          output_names=list(_DECODER_OUTPUTS), opset_version=17, dynamo=False,
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
        return "opset 17, any number of points"
    if fmt == "executorch":  # whole-graph XNNPACK partitioning finds a cycle in this graph; per op it works
        detail = export_executorch(decoder, example, path, dynamic_shapes=dynamic, per_op=True)
        return f"{detail}, any number of points (1..{_MAX_POINTS})"
    if fmt == "litert":
        export_litert(decoder, example, path)
        return f"{example[1].shape[1]} point slots (pad with label -1)"
    if fmt == "coreml":
        ct = import_coremltools()
        program = torch.export.export(decoder, example, dynamic_shapes=dynamic).run_decompositions({})
        with captured_output():  # coremltools draws progress bars
            model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                               compute_precision=ct.precision.FLOAT32)
        spec = save_mlpackage(model, path)
        return f"ML Program, spec v{spec.specificationVersion}, fp32, any number of points (1..{_MAX_POINTS})"
    raise UserError(f"the prompt decoder exports to {', '.join(DECODER_FORMATS)}, not {fmt}")


def load_decoder(fmt: str, path: Path, threads: int | None = None):
    """The exported decoder at ``path`` as a function of its five inputs -> [iou_predictions, low_res_masks]."""
    if fmt == "onnx":
        return load_onnx(path, threads, all_outputs=True)
    if fmt == "executorch":
        return load_executorch(path, all_outputs=True)
    if fmt == "litert":
        return load_litert(path, threads, all_outputs=True)
    if fmt == "coreml":
        require_macos()
        ct = import_coremltools()
        model = ct.models.MLModel(str(path))
        names = [o.name for o in model.get_spec().description.output]

        def run(*xs):
            out = model.predict({k: x.numpy() for k, x in zip(_DECODER_INPUTS, xs)})
            return [out[n] for n in names]

        return run
    raise UserError(f"the prompt decoder exports to {', '.join(DECODER_FORMATS)}, not {fmt}")


#: The prompts every exported decoder is checked on: (points as fractions of the side, labels, a mask input?).
CHECK_PROMPTS = {
    "one point": ([[0.5, 0.5]], [1], False),
    "two points, one background": ([[0.3, 0.4], [0.8, 0.2]], [1, 0], False),
    "box (labels 2, 3)": ([[0.2, 0.3], [0.7, 0.9]], [2, 3], False),
    "five points": ([[0.1, 0.1], [0.2, 0.9], [0.5, 0.5], [0.9, 0.3], [0.6, 0.7]], [1, 1, 0, 1, 0], False),
    "point with a mask input": ([[0.6, 0.6]], [1], True),
}


def export_sam_decoder(weights="repvit_sam", out_dir="exports", img_size: int = 1024, tolerance: float = 1e-4,
                       sam=None, formats=("onnx",), slots: int = 5) -> dict:
    """The prompt decoder in each of ``formats``, reloaded in its runtime and compared with PyTorch
    on the prompts of :data:`CHECK_PROMPTS` (max logit difference, IoU of the binarized masks);
    writes ``repvit_sam_decoder.<ext>`` and ``repvit_sam_decoder.json`` (how to feed them); returns
    what the JSON holds. ``slots``: the point count of the fixed-shape (LiteRT) decoder."""
    sam = create_sam(weights, img_size=img_size) if sam is None else sam  # ``sam``: already built from ``weights``
    decoder = prompt_decoder(sam)
    check_slots(slots, formats)
    grid = img_size // PATCH
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, EMBED_DIM, grid, grid, generator=generator)
    masks = {name: torch.randn(1, 1, 4 * grid, 4 * grid, generator=generator) if with_mask else None
             for name, (_, _, with_mask) in CHECK_PROMPTS.items()}
    files = {}
    for fmt in formats:
        prompts = {name: decoder_inputs(embedding, torch.tensor(coords) * img_size, labels, masks[name],
                                        slots if fmt == "litert" else None)  # LiteRT: fixed point slots
                   for name, (coords, labels, _) in CHECK_PROMPTS.items()}
        # statuses as the encoder's export: ok (parity checked, or "skipped" where it cannot run), parity
        # failed, export failed, unavailable (a missing package); "skipped" for the encoder-only formats
        entry = files[fmt] = {"path": None, "status": "ok", "detail": "", "parity": "", "checks": {}}
        if fmt not in DECODER_FORMATS:
            entry.update(status="skipped", detail=f"the prompt decoder exports to {', '.join(DECODER_FORMATS)}")
            continue
        if FORMATS[fmt].missing():
            entry.update(status="unavailable", detail=FORMATS[fmt].missing())
            continue
        path = out / f"{DECODER_NAME}{FORMATS[fmt].suffix}"
        try:
            with torch.no_grad():
                entry["detail"] = write_decoder(fmt, decoder, prompts["five points"], path)
            entry["path"] = str(path)
        except Exception as err:  # one format failing must not hide the others
            entry.update(status="export failed", detail=first_line(err, with_type=True))
            continue
        try:
            run = load_decoder(fmt, path)
            for name, inputs in prompts.items():
                with torch.no_grad():
                    reference = decoder(*inputs)
                ours = [torch.from_numpy(np.asarray(o)) for o in run(*inputs)]
                diff = max(float((o - r).abs().max()) for o, r in zip(ours, reference))
                entry["checks"][name] = {"max_abs_diff": diff, "mask_iou": mask_iou(ours[1] > 0, reference[1] > 0),
                                         "masks_shape": list(ours[1].shape)}
        except ParitySkipped as why:
            entry["parity"] = f"skipped: {why}"
            continue
        except Exception as err:
            entry.update(status="parity failed", parity=f"could not run: {first_line(err, with_type=True)}")
            continue
        worst = max(c["max_abs_diff"] for c in entry["checks"].values())
        iou = min(c["mask_iou"] for c in entry["checks"].values())
        ok = worst <= tolerance * 10 and iou >= 0.99
        entry.update(status="ok" if ok else "parity failed", parity=f"max abs diff {worst:.1e}, mask IoU >= "
                     f"{iou:.4f} on {len(entry['checks'])} prompts")
    info = {
        "model": DECODER_NAME, "weights": str(weights), "files": files,
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
        "point_count": {"onnx": "any N", "executorch": f"1 <= N <= {_MAX_POINTS}",
                        "coreml": f"1 <= N <= {_MAX_POINTS}",
                        "litert": f"exactly {slots}: fill the unused slots with (0, 0) and label -1; padding points "
                                  "take part in the decoder's attention, so its masks depend on the slot count and "
                                  "differ from the other decoders' (and SamPredictor's) for the same clicks"},
        "outputs": {
            "iou_predictions": "float32 [1, 4]: the predicted IoU of each mask",
            "low_res_masks": f"float32 [1, 4, {4 * grid}, {4 * grid}]: mask logits (> 0: inside); index 0 is "
                             "SAM's single-mask output, 1-3 the three multimask candidates; feed one back as "
                             "mask_input",
        },
        "postprocessing": f"upscale low_res_masks bilinearly to {img_size}x{img_size}, crop the top-left part that "
                          "holds the resized image, resize that bilinearly to the original (height, width), "
                          "threshold at 0 (segment_anything's Sam.postprocess_masks)",
    }
    (out / f"{DECODER_NAME}.json").write_text(json.dumps(info, indent=2))
    return info


def check_slots(slots: int, formats) -> None:
    """The fixed-shape decoder's point slots must hold the checked prompts (only LiteRT has slots)."""
    needed = max(len(labels) for _, labels, _ in CHECK_PROMPTS.values())
    if "litert" in formats and slots < needed:
        raise UserError(f"{param('decoder_points')} must be at least {needed} (the checked prompts' points), got {slots}")


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def prepare_images(sam, sources=None, count: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, list]]:
    """Encoder inputs (SAM's resize, normalisation and padding) with prompts on them: for image
    files or folders in ``sources``, points at fixed fractions of the image; else ``count``
    generated shape images, each with a point in every shape and the shape's box."""
    size = sam.image_encoder.img_size
    prepared = []
    if sources:
        for path in image_files(sources if isinstance(sources, (list, tuple)) else [sources])[:count]:
            image = np.asarray(load_image(path))
            h, w = image.shape[:2]
            points = [([[fx * w, fy * h]], [1]) for fx, fy in ((0.5, 0.5), (0.25, 0.3), (0.7, 0.75))]
            prepared.append((image, points))
    else:
        rng = np.random.default_rng(seed)
        for _ in range(count):
            picture, shapes = shapes_scene(rng, size, 3)
            prompts = []
            for _kind, polygon in shapes:
                xs, ys = zip(*polygon)
                prompts.append(([[sum(xs) / len(xs), sum(ys) / len(ys)]], [1]))
                prompts.append(([[min(xs), min(ys)], [max(xs), max(ys)]], [2, 3]))
            prepared.append((np.asarray(picture), prompts))
    out = []
    for image, prompts in prepared:
        scale = size / max(image.shape[:2])
        out.append((sam_input(image, size)[0][None], [(torch.tensor(c) * scale, labels) for c, labels in prompts]))
    return out


def export_sam_encoder_int8(weights="repvit_sam", out_dir="exports", img_size: int = 1024, sam=None, calib=None,
                            calib_images: int = 8, check_images: int = 4) -> dict:
    """The fused encoder as an int8 ExecuTorch/XNNPACK program (PT2E, per-channel), calibrated on
    ``calib`` (image files or folders; default: generated shape images), then compared with the fp32
    encoder on ``check_images`` other generated images: the IoU between the masks the decoder gives
    for each image's point and box prompts from the int8 and the fp32 embeddings (SAM's single-mask
    output at the decoder's 4x-embedding resolution), and the embeddings' relative error. Writes
    ``repvit_sam_encoder_int8.pte``; returns the check. ``weights=None``: :func:`.model.random_sam`
    (random weights with every branch active)."""
    if min(calib_images, check_images) < 1:
        raise UserError(f"{param('calib_images')} and {param('check_images')} must be >= 1, got {calib_images} and "
                        f"{check_images}")
    missing = FORMATS["executorch"].missing()
    if missing:
        raise UserError(f"int8 encoder: {missing}")
    if sam is None:
        sam = random_sam(img_size) if weights is None else create_sam(weights, img_size=img_size)
    fused = reparameterize(sam)
    encoder, decoder = fused.image_encoder.eval(), prompt_decoder(fused)
    calibration = [x for x, _ in prepare_images(fused, calib, calib_images, seed=1)]
    checks = prepare_images(fused, None, check_images, seed=2)
    path = Path(out_dir) / f"{ENCODER_NAME}_int8.pte"
    path.parent.mkdir(parents=True, exist_ok=True)
    detail = FORMATS["executorch"].write_int8(encoder, calibration[0], path, calibration)
    run = load_executorch(path)
    ious, errors = [], []
    with torch.no_grad():
        for x, prompts in checks:
            reference, ours = encoder(x), torch.from_numpy(run(x))
            errors.append(float((ours - reference).norm() / reference.norm()))
            for coords, labels in prompts:
                masks = [decoder(*decoder_inputs(e, coords, labels))[1][:, 0] > 0 for e in (reference, ours)]
                ious.append(mask_iou(*masks))
    return {"path": str(path), "detail": detail, "calibration": f"{len(calibration)} " + (
            "images of " + str(calib) if calib else "generated shape images"),
            "images": len(checks), "prompts": len(ious), "mask_iou_mean": float(np.mean(ious)),
            "mask_iou_min": float(np.min(ious)), "embedding_rel_error": float(np.mean(errors))}
