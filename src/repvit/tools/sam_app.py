"""``repvit sam app``: click-to-segment with RepViT-SAM in the browser (Gradio, ``pip install 'repvit-toolkit[app]'``).

Upload an image (or take the generated sample), click foreground and background points or two
corners of a box, and the mask is drawn over the image after each click: the image encoder runs
once per image, the prompt decoder once per click, and both latencies are shown. "Segment
everything" runs ``segment_anything``'s automatic mask generator through the same two models. The
current mask downloads as a PNG and as COCO RLE (JSON).

The models run in one of three runtimes (:class:`SamSession`): eager PyTorch, or ONNX Runtime or
ExecuTorch, for which the fused encoder and the prompt decoder are exported once (parity-checked,
as ``repvit sam export`` does) into a folder that ``export_dir`` keeps for the next launch.
:class:`ClickSegmenter` is the app's logic without any Gradio object (tested without a browser);
:func:`build_app` lays it out as a ``gr.Blocks``; :func:`launch_app` serves it, on localhost by default.
"""

import hashlib
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data import load_image, shapes_scene
from ..dense.segmentation import palette
from ..export import FORMATS
from ..reparam import reparameterize
from ..sam import create_sam, sam_input
from ..sam.export import (
    DECODER_NAME,
    ENCODER_NAME,
    decoder_inputs,
    export_sam_decoder,
    export_sam_encoder,
    load_decoder,
    prompt_decoder,
)
from ..utils import UserError, __version__, first_line, flag_text, missing_extra, param

__all__ = ["RUNTIMES", "MODES", "MAX_PIXELS", "ImageEmbedding", "SamSession", "ImageState", "ClickSegmenter",
           "mask_rle", "build_app", "launch_app"]

log = logging.getLogger(__name__)

#: The runtimes the app runs SAM in -> the export format behind it (None: PyTorch itself).
RUNTIMES = {"eager": None, "onnxruntime": "onnx", "executorch": "executorch"}
#: What a click on the image adds, by the label the UI shows.
MODES = ("foreground point", "background point", "box corner")
MAX_PIXELS = 25_000_000  # larger uploads are refused: each is held decoded (75 MB), and each click's mask at full size
MAX_POINTS = 48  # clicks per prompt; the exported ExecuTorch decoder takes at most 64 points
VIEW_SIDE = 2048  # the image shown in the page is at most this long (clicks are mapped back)
MASK_COLOUR = np.array([30, 144, 255], dtype=np.float32)  # as SAM's own demo draws a mask
_POINT_COLOURS = {1: (40, 200, 60), 0: (230, 40, 40)}


@dataclass
class ImageEmbedding:
    """The encoder's output for one image, with the sizes SAM's postprocessing needs."""

    tensor: torch.Tensor  # (1, 256, S/16, S/16)
    original_size: tuple[int, int]  # (height, width) of the image
    input_size: tuple[int, int]  # (height, width) after resizing the longer side to S


class SamSession:
    """RepViT-SAM in one runtime: :meth:`encode` once per image, :meth:`decode` once per prompt.

    Preprocessing and postprocessing are SAM's (``SamPredictor``'s): the longer side resized to the
    encoder's input, normalised and zero-padded; masks upscaled to the original image. The decoder
    is the one ``repvit sam export`` exports (prompt encoder and mask decoder as one module) in
    every runtime, eager included, so the runtimes give the same masks for the same clicks.
    """

    def __init__(self, sam, runtime: str = "eager", export_dir=None, weights=None):
        from segment_anything.utils.transforms import ResizeLongestSide

        if runtime not in RUNTIMES:
            raise UserError(f"{param('runtime')} {runtime!r}: choose from {', '.join(RUNTIMES)}")
        self.sam = sam if sam.image_encoder.deployed else reparameterize(sam)
        self.runtime = runtime
        self.img_size = self.sam.image_encoder.img_size
        self.resize = ResizeLongestSide(self.img_size)
        self._lock = threading.Lock()  # one run at a time: ExecuTorch's methods are not reentrant
        if RUNTIMES[runtime] is None:
            self._encoder, self._decoder = self.sam.image_encoder, prompt_decoder(self.sam)
        else:
            if export_dir is None:
                raise UserError(f"{param('runtime')} {runtime} exports the models first: give an {param('export_dir')}")
            self._encoder, self._decoder = _exported_models(self.sam, RUNTIMES[runtime], Path(export_dir), weights)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> ImageEmbedding:
        """The embedding of an RGB uint8 image (H, W, 3)."""
        pixels, input_size = sam_input(image, self.img_size)
        with self._lock:
            tensor = torch.as_tensor(np.asarray(self._encoder(pixels[None])))  # a tensor in eager, an array elsewhere
        return ImageEmbedding(tensor, (int(image.shape[0]), int(image.shape[1])), input_size)

    @torch.inference_mode()
    def decode_logits(self, embedding: ImageEmbedding, coords, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's raw outputs for points ``coords`` (N, 2) in the resized image's pixels with
        ``labels`` (1, 0, box corners 2 and 3, padding -1): low-resolution mask logits (1, 4, s, s)
        and predicted IoUs (1, 4); index 0 is the single-mask output, 1-3 the multimask candidates."""
        inputs = decoder_inputs(embedding.tensor, coords, labels)
        with self._lock:
            iou, low_res = self._decoder(*inputs)
        return torch.as_tensor(np.asarray(low_res)), torch.as_tensor(np.asarray(iou))

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor, embedding: ImageEmbedding, size=None) -> torch.Tensor:
        """Mask logits at the original image size (or ``size``), as ``Sam.postprocess_masks``."""
        return self.sam.postprocess_masks(low_res, embedding.input_size, size or embedding.original_size)

    def decode(self, embedding: ImageEmbedding, points, labels, box=None) -> tuple[np.ndarray, np.ndarray]:
        """Masks (K, H, W) bool and their predicted IoUs (K,), best first, for points ``(x, y)`` in
        image pixels with labels 1 (foreground) / 0 (background) and an optional box ``(x0, y0, x1,
        y1)``. A lone point is ambiguous: SAM's three candidates come back (SAM's advice); otherwise
        its single mask."""
        coords, labels = [tuple(p) for p in points], [int(label) for label in labels]
        if not coords and box is None:
            raise UserError("click the image to add a point, or two corners of a box, first")
        if box is not None:
            coords += [tuple(box[:2]), tuple(box[2:])]
            labels += [2, 3]
        else:
            coords.append((0.0, 0.0))  # SAM's padding point when there is no box (SamPredictor adds it too)
            labels.append(-1)
        resized = self.resize.apply_coords(np.array(coords, dtype=np.float32), embedding.original_size)
        low_res, iou = self.decode_logits(embedding, resized, labels)
        chosen = [1, 2, 3] if len(points) == 1 and box is None else [0]
        order = sorted(chosen, key=lambda i: -float(iou[0, i]))
        masks = self.upscale(low_res[:, order], embedding)[0] > self.sam.mask_threshold
        return masks.numpy(), iou[0, order].numpy()


def _exported_models(sam, fmt: str, folder: Path, weights) -> tuple:
    """The encoder and decoder exported to ``fmt`` in ``folder`` (reused when the folder holds this
    model's export from this version), loaded in their runtime."""
    missing = FORMATS[fmt].missing()
    if missing:
        raise UserError(f"{param('runtime')} needs {fmt}: {missing}")
    folder.mkdir(parents=True, exist_ok=True)
    img_size = sam.image_encoder.img_size
    encoder_path = folder / f"{ENCODER_NAME}{FORMATS[fmt].suffix}"
    decoder_path = folder / f"{DECODER_NAME}{FORMATS[fmt].suffix}"
    stamp_path = folder / f"sam_app_{fmt}.json"
    stamp = {"model": _fingerprint(sam), "img_size": img_size, "format": fmt, "repvit": __version__,
             "torch": torch.__version__}
    try:
        fresh = json.loads(stamp_path.read_text()) == stamp
    except (OSError, ValueError):  # none yet, or unreadable: export again
        fresh = False
    if fresh and encoder_path.exists() and decoder_path.exists():
        log.info(f"reusing the {fmt} encoder and decoder in {folder}")
    else:
        stamp_path.unlink(missing_ok=True)
        log.info(f"exporting the encoder and decoder to {fmt} in {folder} (once: they are checked against PyTorch)")
        start = time.perf_counter()
        result = export_sam_encoder(weights, [fmt], folder, img_size, sam=sam)[0]
        if not result.ok:
            raise UserError(f"{param('runtime')}: the encoder's {fmt} export: {result.status}: "
                            f"{result.detail or result.parity}")
        entry = export_sam_decoder(weights, folder, img_size, sam=sam, formats=(fmt,))["files"][fmt]
        if entry["status"] != "ok":
            raise UserError(f"{param('runtime')}: the decoder's {fmt} export: {entry['status']}: "
                            f"{entry['detail'] or entry['parity']}")
        stamp_path.write_text(json.dumps(stamp))
        log.info(f"exported in {time.perf_counter() - start:.0f} s")
    encoder = FORMATS[fmt].load(encoder_path)
    return encoder, load_decoder(fmt, decoder_path)


def _fingerprint(sam) -> str:
    """A hash of the model's weights: an export folder is reused only for the same weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(sam.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ImageState:
    """One browser session's image, its embedding and the prompt clicked so far."""

    name: str  # the file stem the downloads are named after
    image: np.ndarray  # RGB uint8 (H, W, 3)
    embedding: ImageEmbedding
    encoder_ms: float
    folder: Path  # where this session's downloads are written
    points: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    box: tuple | None = None
    corner: tuple | None = None  # the first corner of a box being drawn
    mask: np.ndarray | None = None
    score: float | None = None
    decoder_ms: float | None = None
    everything: list | None = None  # "segment everything": masks, largest first
    everything_note: str = ""


def check_app_options(max_pixels: int, points_per_side: int) -> None:
    """One-line errors for the app's limits, raised before any weights are loaded."""
    if max_pixels < 1:
        raise UserError(f"{param('max_pixels')} must be >= 1, got {max_pixels}")
    if points_per_side < 1:
        raise UserError(f"{param('points_per_side')} must be >= 1, got {points_per_side}")


class ClickSegmenter:
    """The app's logic, without Gradio: open an image, add clicks, segment everything, write downloads."""

    def __init__(self, session: SamSession, work_dir, max_pixels: int = MAX_PIXELS, points_per_side: int = 16,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95):
        check_app_options(max_pixels, points_per_side)
        self.session, self.work_dir, self.max_pixels = session, Path(work_dir), max_pixels
        # segment everything: the grid of point prompts and SAM's thresholds for keeping a mask
        self.points_per_side = points_per_side
        self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh

    def sample_image(self) -> Path:
        """The bundled sample: a scene of coloured shapes, generated (deterministically) at first use."""
        path = self.work_dir / "sample_shapes.png"
        if not path.is_file():
            picture, _ = shapes_scene(np.random.default_rng(7), 512, 4)
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.save(path)
        return path

    def open(self, path) -> ImageState:
        """Check the size, read the image and run the encoder on it."""
        path = Path(path)
        try:
            with Image.open(path) as probe:
                width, height = probe.size  # the header only: a huge image is refused before it is decoded
        except Image.DecompressionBombError:
            width = height = None
        except (OSError, SyntaxError):
            width = height = 0  # load_image says what is wrong with the file
        if width is None or width * height > self.max_pixels:
            size = f"{width}x{height} image ({width * height / 1e6:.1f} megapixels)" if width else "image"
            raise UserError(f"the {size} is over the limit of {self.max_pixels / 1e6:g} megapixels "
                            f"({param('max_pixels')}): downscale it first")
        image = np.asarray(load_image(path))
        start = time.perf_counter()
        embedding = self.session.encode(image)
        encoder_ms = 1e3 * (time.perf_counter() - start)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.work_dir))  # browser sessions never share files
        return ImageState(path.stem, image, embedding, encoder_ms, folder)

    def view_scale(self, state: ImageState) -> float:
        return min(1.0, VIEW_SIDE / max(state.image.shape[:2]))

    def click(self, state: ImageState, x: float, y: float, mode: str) -> ImageState:
        """Add the click at ``(x, y)`` in the pixels of the shown image, then segment (once a box is complete)."""
        if mode not in MODES:
            raise UserError(f"unknown click mode {mode!r}: choose from {', '.join(MODES)}")
        scale = self.view_scale(state)
        height, width = state.image.shape[:2]
        point = (min(max(x / scale, 0.0), width - 1.0), min(max(y / scale, 0.0), height - 1.0))
        state.everything = None
        if mode == "box corner":
            if state.corner is None:
                state.corner = point
                return state
            (x0, y0), (x1, y1) = state.corner, point
            state.corner = None
            if x0 == x1 or y0 == y1:
                raise UserError("the box's two corners must differ in x and in y: click the first corner again")
            state.box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        else:
            if len(state.points) >= MAX_POINTS:
                raise UserError(f"at most {MAX_POINTS} points per prompt: clear them to start again")
            state.points.append(point)
            state.labels.append(1 if mode == "foreground point" else 0)
        return self.segment(state)

    def segment(self, state: ImageState) -> ImageState:
        start = time.perf_counter()
        masks, scores = self.session.decode(state.embedding, state.points, state.labels, state.box)
        state.decoder_ms = 1e3 * (time.perf_counter() - start)
        state.mask, state.score = masks[0], float(scores[0])
        return state

    def clear(self, state: ImageState) -> ImageState:
        state.points, state.labels, state.box, state.corner = [], [], None, None
        state.mask = state.score = state.decoder_ms = state.everything = None
        return state

    def everything(self, state: ImageState) -> ImageState:
        """Every object: SAM's automatic mask generator (a grid of single-point prompts, filtered by
        predicted IoU and stability, duplicates removed) run by this session, on the image's embedding."""
        from segment_anything import SamAutomaticMaskGenerator

        # at the encoder's resolution: masks upscaled further add no detail, and a big image's
        # per-prompt logits would need gigabytes
        target = state.image if max(state.image.shape[:2]) <= self.session.img_size else \
            self.session.resize.apply_image(state.image)
        generator = SamAutomaticMaskGenerator(self.session.sam, points_per_side=self.points_per_side,
                                              points_per_batch=16, pred_iou_thresh=self.pred_iou_thresh,
                                              stability_score_thresh=self.stability_score_thresh)
        generator.predictor = _SessionPredictor(self.session, state.embedding)
        start = time.perf_counter()
        found = sorted(generator.generate(target), key=lambda m: -m["area"])
        elapsed = 1e3 * (time.perf_counter() - start)
        if target is not state.image:
            size = state.image.shape[1::-1]
            for m in found:
                m["segmentation"] = np.asarray(Image.fromarray(m["segmentation"]).resize(size, Image.NEAREST))
                m["area"] = int(m["segmentation"].sum())
                m["bbox"] = [v * state.image.shape[1] / target.shape[1] for v in m["bbox"]]
                m["point_coords"] = [[v * state.image.shape[1] / target.shape[1] for v in m["point_coords"][0]]]
        prompts = self.points_per_side ** 2
        state.everything = found
        state.everything_note = (f"segment everything: {len(found)} masks from {self.points_per_side}x"
                                 f"{self.points_per_side} point prompts in {elapsed:.0f} ms "
                                 f"({elapsed / prompts:.1f} ms per prompt, the image's embedding reused)")
        if not found:
            state.everything_note += (f"; none passed SAM's thresholds (predicted IoU > {self.pred_iou_thresh}, "
                                      f"stability >= {self.stability_score_thresh})")
        return state

    def view(self, state: ImageState | None) -> np.ndarray | None:
        """The image as shown: the mask (or every mask) blended in, the clicked points and the box drawn."""
        if state is None:
            return None
        scale = self.view_scale(state)
        height, width = state.image.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        shown = Image.fromarray(state.image)
        shown = shown.resize(size, Image.BILINEAR) if scale < 1 else shown
        pixels = np.asarray(shown).astype(np.float32)

        def blend(mask, colour):
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST)) if scale < 1 else mask
            pixels[mask] = 0.5 * pixels[mask] + 0.5 * colour

        if state.everything is not None:
            colours = palette(max(len(state.everything), 1))
            for m, colour in zip(state.everything, colours):  # largest first: small objects stay visible
                blend(m["segmentation"], colour.astype(np.float32))
        elif state.mask is not None:
            blend(state.mask, MASK_COLOUR)
        picture = Image.fromarray(pixels.round().astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        radius = max(3, round(0.008 * max(size)))
        if state.everything is None:
            if state.box is not None:
                draw.rectangle([v * scale for v in state.box], outline=(255, 200, 0), width=max(2, radius // 2))
            for (x, y), label in zip(state.points, state.labels):
                draw.ellipse([x * scale - radius, y * scale - radius, x * scale + radius, y * scale + radius],
                             fill=_POINT_COLOURS[label], outline=(255, 255, 255))
            if state.corner is not None:
                x, y = state.corner[0] * scale, state.corner[1] * scale
                draw.line([x - 2 * radius, y, x + 2 * radius, y], fill=(255, 200, 0), width=2)
                draw.line([x, y - 2 * radius, x, y + 2 * radius], fill=(255, 200, 0), width=2)
        return np.asarray(picture)

    def status(self, state: ImageState | None) -> str:
        """One line: the latencies, then what the mask is, or what the next click does."""
        if state is None:
            return "Upload an image or take the sample, then click it."
        runtime = self.session.runtime
        if state.everything is not None:
            return f"{runtime}: encoder {state.encoder_ms:.0f} ms (once per image); {state.everything_note}"
        line = f"{runtime}: encoder {state.encoder_ms:.0f} ms (once per image)"
        if state.decoder_ms is not None:
            area = int(state.mask.sum())
            line += (f", decoder {state.decoder_ms:.1f} ms (this click); mask {area} px "
                     f"({100 * area / state.mask.size:.1f}%), predicted IoU {state.score:.2f}")
        if state.corner is not None:
            line += "; box: now click the opposite corner"
        elif state.mask is None:
            line += "; click the image to add a point"
        return line

    def downloads(self, state: ImageState | None) -> tuple[str | None, str | None]:
        """The current mask (or every mask) as a PNG and as COCO RLE in JSON; None when there is none."""
        if state is None or (state.mask is None and state.everything is None):
            return None, None
        height, width = state.image.shape[:2]
        info = {"image": state.name, "size": [height, width], "runtime": self.session.runtime}
        kind = "mask" if state.everything is None else "everything"
        png, json_path = state.folder / f"{state.name}_{kind}.png", state.folder / f"{state.name}_{kind}.json"
        if state.everything is not None:
            labels = np.zeros((height, width), dtype=np.uint16)  # 0 none, i: mask i (smaller ones drawn last, on top)
            for i, m in enumerate(state.everything, start=1):
                labels[m["segmentation"]] = i
            Image.fromarray(labels if len(state.everything) > 255 else labels.astype(np.uint8)).save(png)
            info["masks"] = [{"id": i, "segmentation": mask_rle(m["segmentation"]), "area": int(m["area"]),
                              "bbox": [float(v) for v in m["bbox"]], "predicted_iou": float(m["predicted_iou"]),
                              "stability_score": float(m["stability_score"]),
                              "point": [float(v) for v in m["point_coords"][0]]}
                             for i, m in enumerate(state.everything, start=1)]
            info["png"] = "pixel value i: mask i of masks (0: none)"
        else:
            Image.fromarray(state.mask.astype(np.uint8) * 255).save(png)
            ys, xs = np.nonzero(state.mask)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] \
                if len(xs) else None
            info.update(prompt={"points": state.points, "labels": state.labels, "box": state.box},
                        segmentation=mask_rle(state.mask), area=int(state.mask.sum()), bbox=bbox,
                        predicted_iou=state.score)
        json_path.write_text(json.dumps(info))
        return str(png), str(json_path)


class _SessionPredictor:
    """What ``SamAutomaticMaskGenerator`` uses of ``SamPredictor``, served by a :class:`SamSession`:
    "segment everything" then runs in the app's runtime and reuses the image's embedding. The
    generator hands it the image, or the image resized as for the encoder (same embedding)."""

    def __init__(self, session: SamSession, embedding: ImageEmbedding):
        self.session, self.model, self.transform = session, session.sam, session.resize
        self.device = torch.device("cpu")
        self._embedding, self._size = embedding, None

    def set_image(self, image: np.ndarray) -> None:
        if tuple(image.shape[:2]) not in (self._embedding.original_size, self._embedding.input_size):
            raise ValueError(f"an image of {image.shape[:2]} is not the one the embedding was computed for")
        self._size = tuple(image.shape[:2])

    def reset_image(self) -> None:
        self._size = None

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                      return_logits=False):
        """One single-point prompt per row of ``point_coords`` (B, 1, 2), already resized as for the
        encoder: their three candidate masks (B, 3, H, W) at the image's size, IoUs (B, 3), low-res logits."""
        low, ious = [], []
        padding = np.zeros((1, 2), dtype=np.float32)
        for coords, labels in zip(point_coords.numpy(), point_labels.numpy()):
            low_res, iou = self.session.decode_logits(self._embedding, np.concatenate([coords, padding]),
                                                      [*labels.tolist(), -1])
            low.append(low_res[0, 1:] if multimask_output else low_res[0, :1])
            ious.append(iou[0, 1:] if multimask_output else iou[0, :1])
        low_res, iou = torch.stack(low), torch.stack(ious)
        masks = self.session.upscale(low_res, self._embedding, self._size)
        return (masks if return_logits else masks > self.model.mask_threshold), iou, low_res


def mask_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean mask (H, W): compressed (``counts`` a string) with pycocotools, else
    uncompressed (``counts`` a list, column-major runs starting with background), which
    pycocotools also reads (``frPyObjects``)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        from segment_anything.utils.amg import mask_to_rle_pytorch

        return mask_to_rle_pytorch(torch.from_numpy(np.asarray(mask, dtype=bool))[None])[0]
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _import_gradio():
    missing = missing_extra(["gradio", "segment_anything"], "app")
    if missing:
        raise UserError(missing)
    import gradio as gr

    return gr


def build_app(weights="repvit_sam", runtime: str = "eager", *, img_size: int = 1024, max_pixels: int = MAX_PIXELS,
              export_dir=None, points_per_side: int = 16, sam=None):
    """The app as a ``gr.Blocks`` (not launched). ``weights``: a path, URL or ``repvit_sam``;
    ``sam``: an already built model instead. ``export_dir``: where the ONNX Runtime or ExecuTorch
    models are exported and reused (default: a temporary folder)."""
    if runtime not in RUNTIMES:
        raise UserError(f"{param('runtime')} {runtime!r}: choose from {', '.join(RUNTIMES)}")
    check_app_options(max_pixels, points_per_side)  # before loading any weights
    gr = _import_gradio()
    source_name = "given model" if sam is not None else f"`{weights}`"
    sam = create_sam(weights, img_size=img_size, deploy=True) if sam is None else sam
    work_dir = Path(tempfile.mkdtemp(prefix="repvit-sam-app-"))
    try:
        session = SamSession(sam, runtime, export_dir or work_dir / "export", weights)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    logic = ClickSegmenter(session, work_dir, max_pixels, points_per_side)

    def show(state):
        png, rle = logic.downloads(state)
        return (logic.view(state), logic.status(state), state,
                gr.DownloadButton(value=png, interactive=png is not None),
                gr.DownloadButton(value=rle, interactive=rle is not None))

    def warned(state, err: UserError):
        gr.Warning(flag_text(err))  # a one-line toast, nothing else changes
        return show(state)

    def on_open(path, state):
        if path is None:
            return show(None)
        try:
            return show(logic.open(path))
        except UserError as err:
            return warned(state, err)

    def on_sample(state):
        path = str(logic.sample_image())
        return (path, *on_open(path, state))

    def on_click(state, mode, evt: gr.SelectData):
        if state is None:
            return warned(None, UserError("upload an image (or take the sample) first"))
        try:
            return show(logic.click(state, float(evt.index[0]), float(evt.index[1]), mode))
        except UserError as err:
            return warned(state, err)

    def on_clear(state):
        return show(logic.clear(state) if state is not None else None)

    def on_everything(state):
        if state is None:
            return warned(None, UserError("upload an image (or take the sample) first"))
        return show(logic.everything(state))

    with gr.Blocks(title="RepViT-SAM", analytics_enabled=False) as blocks:
        gr.Markdown(f"## RepViT-SAM: click to segment\nRuntime **{runtime}**, weights {source_name}, encoder input "
                    f"{session.img_size} px. Upload an image, then click it: each click adds a point (or a box "
                    "corner) and the mask follows.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Image(label="image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                  height=320, elem_id="sam-input")
                sample = gr.Button("sample image", elem_id="sam-sample")
                mode = gr.Radio(list(MODES), value=MODES[0], label="a click adds", elem_id="sam-mode")
                with gr.Row():
                    clear = gr.Button("clear clicks", elem_id="sam-clear")
                    everything = gr.Button("segment everything", elem_id="sam-everything")
            with gr.Column(scale=2):
                view = gr.Image(label="click to segment", interactive=False, format="png", height=560,
                                elem_id="sam-view")
                status = gr.Markdown(logic.status(None), elem_id="sam-status")
                with gr.Row():
                    mask_png = gr.DownloadButton("mask (PNG)", interactive=False, elem_id="sam-png")
                    mask_rle_json = gr.DownloadButton("mask (COCO RLE, JSON)", interactive=False, elem_id="sam-rle")
        outputs = [view, status, state, mask_png, mask_rle_json]
        source.upload(on_open, [source, state], outputs)
        source.clear(lambda: show(None), [], outputs)
        sample.click(on_sample, [state], [source, *outputs])
        view.select(on_click, [state, mode], outputs)
        clear.click(on_clear, [state], outputs)
        everything.click(on_everything, [state], outputs)
    weakref.finalize(blocks, shutil.rmtree, work_dir, True)  # downloads and the temporary export go with the app
    return blocks


def launch_app(weights="repvit_sam", runtime: str = "eager", *, host: str = "127.0.0.1", port: int = 7860,
               img_size: int = 1024, max_pixels: int = MAX_PIXELS, export_dir=None, points_per_side: int = 16,
               sam=None, block: bool = True):
    """Build the app and serve it at ``http://host:port``; ``block``: until Ctrl-C (else return at
    once, the server running in a thread). Returns the ``gr.Blocks`` (``.local_url``, ``.close()``)."""
    if not 1 <= port <= 65535:
        raise UserError(f"{param('port')} must be between 1 and 65535, got {port}")
    _check_address(host, port)  # before loading any weights
    blocks = build_app(weights, runtime, img_size=img_size, max_pixels=max_pixels, export_dir=export_dir,
                       points_per_side=points_per_side, sam=sam)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(f"serving on {host}: anyone who can reach this machine on port {port} can use the app")
    try:
        # uploads far larger than any image under the pixel limit are refused by Gradio itself
        blocks.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True,
                      quiet=not block, max_file_size=max(50_000_000, 8 * max_pixels))
    except OSError as err:  # taken since the check
        raise UserError(f"{param('port')} {port} on {host}: {first_line(err)}") from None
    return blocks


def _check_address(host: str, port: int) -> None:
    """One-line errors for a host name that does not resolve or a port already taken."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UserError(f"{param('host')} {host}: {err.strerror}") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(f"{param('port')} {port} on {host}: {err.strerror} (another server uses it? choose "
                            f"another {param('port')})") from None
