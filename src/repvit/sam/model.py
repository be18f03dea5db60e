"""The RepViT-SAM model: our encoder, Meta's prompt encoder and mask decoder.

The image encoder is RepViT-M2.3's four stages, built by the package's one builder from a spec in
which the last downsampling layer keeps the resolution (stride 1: a 1024x1024 image gives a
640x64x64 map), then the official neck: 1x1 conv to 256 (no bias), LayerNorm2d, 3x3 conv (no bias),
LayerNorm2d, which gives SAM's 256x64x64 image embedding. Everything after the encoder is
``segment_anything``'s, configured as SAM's (and the official RepViT-SAM's) builder does.

The release checkpoint ``repvit_sam.pt`` (official key names: ``image_encoder.features.N.*``)
loads as it is; our own files (:func:`save_sam`, training or reparameterized structure) load too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import LayerNorm2d
from torch import nn

from ..models import RepViTFeatures, get_variant
from ..reparam import reparameterize
from ..specs import NetSpec, as_net
from ..utils import UserError, missing_extra, param
from ..weights import (
    CheckpointError,
    atomic_write,
    convert_state_dict,
    first_mismatch,
    read_state_dict,
    resolve_source,
    to_official,
)

__all__ = ["check_img_size", "SAM_WEIGHTS", "RepViTSamEncoder", "sam_encoder_spec", "sam_neck", "assemble_sam", "create_sam",
           "random_sam", "read_sam_state", "save_sam", "official_sam_state", "sam_input"]

#: Released RepViT-SAM weights by name (THU-MIG/RepViT, GitHub release v1.0).
SAM_WEIGHTS = {"repvit_sam": "https://github.com/THU-MIG/RepViT/releases/download/v1.0/repvit_sam.pt"}

EMBED_DIM = 256  # SAM's prompt / image-embedding width
PATCH = 16  # input pixels per embedding cell (SAM's ViT patch; here the encoder's total stride)


def check_img_size(img_size: int) -> None:
    """A one-line :class:`UserError` (a ValueError) unless ``img_size`` is a SAM input size."""
    if img_size % PATCH or img_size < 2 * PATCH:
        raise UserError(f"{param('img_size')} must be a multiple of {PATCH} (at least {2 * PATCH}), got {img_size}")
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # SAM's input normalisation (0-255)
_ENCODER = "image_encoder."
_BODY = "image_encoder.body."


def sam_encoder_spec() -> NetSpec:
    """RepViT-M2.3 with its last downsampling layer at stride 1 (total stride 16, not 32)."""
    net = as_net(get_variant("repvit_m2_3").spec)
    last = net.stages[-1]
    kept = dataclasses.replace(last, downsample=dataclasses.replace(last.downsample, stride=1))
    return dataclasses.replace(net, stages=net.stages[:-1] + (kept,))


def sam_neck(in_channels: int, embed_dim: int = EMBED_DIM) -> nn.Sequential:
    """SAM's neck (as RepViT-SAM and MobileSAM use it): 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d.

    timm's LayerNorm2d (one layer_norm op, eps 1e-6) computes segment_anything's, with the same
    weight names; int8 lowering for XNNPACK fails on segment_anything's mean/variance version."""
    return nn.Sequential(
        nn.Conv2d(in_channels, embed_dim, 1, bias=False), LayerNorm2d(embed_dim, eps=1e-6),
        nn.Conv2d(embed_dim, embed_dim, 3, padding=1, bias=False), LayerNorm2d(embed_dim, eps=1e-6))


class RepViTSamEncoder(nn.Module):
    """Image (N, 3, S, S), normalised and padded as SAM does -> embedding (N, 256, S/16, S/16)."""

    def __init__(self, spec: NetSpec | None = None, embed_dim: int = EMBED_DIM, img_size: int = 1024):
        super().__init__()
        spec = spec or sam_encoder_spec()
        net = as_net(spec)
        self.img_size = img_size  # what SAM's preprocessing resizes and pads to
        self.body = RepViTFeatures(spec, out_indices=(len(net.stages) - 1,), name="repvit_sam_encoder")
        self.neck = sam_neck(net.widths[-1], embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.body(x)[-1])

    @property
    def deployed(self) -> bool:
        return self.body.deployed


def assemble_sam(image_encoder: nn.Module, img_size: int = 1024) -> nn.Module:
    """A ``segment_anything.modeling.Sam`` around ``image_encoder`` (which gives the 256 x S/16 x S/16
    embedding): SAM's prompt encoder and mask decoder as SAM's builder configures them, at the square
    input ``img_size``. Serves RepViT-SAM and the distillation teachers (SAM's ViT encoders)."""
    try:
        from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    except ImportError:
        raise UserError(missing_extra(["segment_anything"], "sam") or "segment_anything does not import") from None
    grid = img_size // PATCH
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=EMBED_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8), transformer_dim=EMBED_DIM,
            iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def sam_input(image: np.ndarray, img_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """An RGB image (H, W, 3, uint8) as SAM's encoders take it: the longest side resized to
    ``img_size`` (SAM's ``ResizeLongestSide``), normalised, zero-padded to (3, img_size, img_size).
    Returns the tensor and the resized image's (height, width) inside it."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(img_size).apply_image(image)
    h, w = resized.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
    pixels = (pixels - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
    return F.pad(pixels, (0, img_size - w, 0, img_size - h)), (h, w)


def create_sam(weights=None, *, deploy: bool = False, img_size: int = 1024) -> nn.Module:
    """A ``segment_anything.modeling.Sam`` with the RepViT-SAM encoder, in eval mode.

    ``weights``: a path, an https:// URL, a Hub file ``hf-hub:ORG/REPO:FILE`` (a Space:
    ``hf-hub:spaces/ORG/NAME:FILE``) or ``"repvit_sam"`` (the release, downloaded once into the
    torch hub cache); the official file and our own (:func:`save_sam`, fused or not) load without
    editing. ``deploy``: reparameterize the encoder (the rest has nothing to fuse); a fused file
    always gives a fused model. ``img_size``: the square input (1024 as released; smaller ones give
    a proportionally smaller embedding, for tests and experiments).
    """
    check_img_size(img_size)
    sam = assemble_sam(RepViTSamEncoder(img_size=img_size), img_size)
    if weights is not None:
        state, fused, path = read_sam_state(weights)
        if fused:
            sam = reparameterize(sam)
        problem = first_mismatch(sam.state_dict(), state)
        if problem:
            raise CheckpointError(f"{path}: not RepViT-SAM weights: {problem}")
        sam.load_state_dict(state)
    if deploy and not sam.image_encoder.deployed:
        sam = reparameterize(sam)
    return sam.eval()


def random_sam(img_size: int = 1024, *, deploy: bool = False, seed: int = 0) -> nn.Module:
    """RepViT-SAM with random weights and no branch switched off, for latency and quantization checks
    without the released weights: the residual BatchNorms the builder zero-initialises (as the
    official code does) get small non-zero scales, as after training. (A zero branch is not a fair
    test: a converter may drop it, as LiteRT's did, and int8 error would be understated.)"""
    sam = create_sam(None, img_size=img_size)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in sam.image_encoder.modules():
            if isinstance(module, nn.BatchNorm2d) and not module.weight.any():
                module.weight.copy_(0.05 + 0.1 * torch.rand(module.weight.shape, generator=generator))
    return reparameterize(sam).eval() if deploy else sam


def read_sam_state(source) -> tuple[dict, bool, Path]:
    """``(state dict in this package's names, whether the encoder is reparameterized, file)`` of a
    RepViT-SAM checkpoint: a path, a URL, an ``hf-hub:`` file or a name in :data:`SAM_WEIGHTS`."""
    path = resolve_source(SAM_WEIGHTS.get(str(source), source))
    state = read_state_dict(path)
    features = {k[len(_ENCODER):]: v for k, v in state.items() if k.startswith(_ENCODER + "features.")}
    if features:  # the official layout: the encoder's rows are RepViT's flat "features" list
        body, _ = convert_state_dict(features)
        state = {k: v for k, v in state.items() if not k.startswith(_ENCODER + "features.")}
        state.update({_BODY + k: v for k, v in body.items()})
    if not any(k.startswith(_BODY) for k in state):
        raise CheckpointError(f"{path}: not a RepViT-SAM checkpoint (no image_encoder.features.* or "
                              "image_encoder.body.* weights)")
    return state, _BODY + "stem.conv1.weight" in state, path


def official_sam_state(sam: nn.Module) -> dict:
    """``sam``'s weights (training-structure encoder) in the layout of the released ``repvit_sam.pt``:
    the encoder's rows as the official flat ``image_encoder.features.N`` list."""
    if sam.image_encoder.deployed:
        raise ValueError("the official layout holds the training structure: give the model before reparameterize()")
    state = sam.state_dict()
    body = to_official({k[len(_BODY):]: v for k, v in state.items() if k.startswith(_BODY)})
    out = {_ENCODER + k: v for k, v in body.items()}
    out.update({k: v for k, v in state.items() if not k.startswith(_BODY)})
    return out


def save_sam(sam: nn.Module, path) -> Path:
    """``sam``'s weights as safetensors (training or reparameterized encoder; :func:`create_sam` reads both)."""
    state = {k: v.detach().contiguous() for k, v in sam.state_dict().items()}
    fused = str(bool(sam.image_encoder.deployed))
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"repvit_sam": "1", "deployed": fused}))
