"""Reading checkpoints of any supported layout into this package's names.

Supported layouts, recognised from their keys (no manual key editing):

* ``official`` - THU-MIG/RepViT releases: ``{"model": state_dict}`` with a flat ``features.N`` list
  and ``classifier.classifier`` / ``classifier.classifier_dist`` heads (training or deployed form).
* ``timm`` - timm's ``repvit_*`` state dicts (``stem.``, ``stages.``, ``head.head``), training or deployed.
* ``repvit`` - this package's own format (safetensors preferred, written by :func:`save_weights`),
  training or deployed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import RepViT, get_variant, list_models
from ..reparam import reparameterize
from .convert import convert_state_dict, strip_wrappers
from .download import resolve_source
from .files import CheckpointError, load_torch_file, read_safetensors

__all__ = ["Checkpoint", "read_checkpoint", "read_state_dict"]

log = logging.getLogger(__name__)


def _read_file(path: Path) -> tuple[dict, dict]:
    """Raw tensors (unwrapped from training-checkpoint dicts) and any metadata."""
    with open(path, "rb") as f:
        head = f.read(9)
    is_safetensors = path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")
    if is_safetensors:
        return read_safetensors(path)
    obj = load_torch_file(path)

    metadata = {}
    if isinstance(obj, dict) and obj.get("qat") is True:
        raise CheckpointError(f"{path}: a `repvit train --qat` checkpoint (a fake-quantized graph, not RepViT "
                              f"weights): use the model-best-int8.pte next to it, or continue it with repvit train "
                              f"--resume {path}")
    if isinstance(obj, dict):
        if isinstance(obj.get("repvit_metadata"), dict):
            metadata = {k: str(v) for k, v in obj["repvit_metadata"].items()}
        # The raw weights first; EMA weights only when a file holds nothing else.
        for key in ("model", "state_dict", "model_state_dict", "model_ema", "state_dict_ema"):
            if isinstance(obj.get(key), dict):
                if key.endswith("ema"):
                    log.info("%s: loading the EMA weights (%r), the only weights in the file", path, key)
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (or a dict with a 'model' state dict), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: entry {bad[0]!r} is not a tensor; expected a state dict or a dict holding one under "
            f"'model' or 'state_dict' (top-level keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    return obj, metadata


@dataclass
class Checkpoint:
    """A checkpoint read from disk, with keys already in this package's naming."""

    state_dict: dict
    path: Path
    format: str
    metadata: dict = field(default_factory=dict)

    @property
    def deployed(self) -> bool | None:
        """True for a reparameterized checkpoint, False for a training one, None if unrecognisable."""
        if "stem.conv1.weight" in self.state_dict:
            return True
        if "stem.conv1.conv.weight" in self.state_dict:
            return False
        return None

    @property
    def distillation(self) -> bool:
        return any(k.startswith("head.head_dist.") for k in self.state_dict)

    @property
    def legacy(self) -> bool:
        return any(k.endswith("token_mixer.conv1x1.bn.weight") for k in self.state_dict)

    @property
    def num_classes(self) -> int:
        """Classifier outputs; 0 for a checkpoint without a classifier (a backbone)."""
        for key in ("head.head.linear.weight", "head.weight"):
            if key in self.state_dict:
                return int(self.state_dict[key].shape[0])
        return 0

    @property
    def class_names(self) -> list[str] | None:
        names = self.metadata.get("class_names")
        return json.loads(names) if names else None

    def describe(self) -> str:
        """What the checkpoint looks like, e.g. "repvit_m0_9 (num_classes=1000, distillation)"."""
        matches = _matching_variants(self.state_dict, bool(self.deployed), self.legacy)
        arch = " or ".join(matches) if matches else "no registered RepViT variant"
        traits = [f"num_classes={self.num_classes}"] if self.num_classes else ["no classifier"]
        traits += ["distillation"] * self.distillation + ["reparameterized"] * bool(self.deployed)
        traits += ["legacy token mixer"] * self.legacy
        return f"{arch} ({', '.join(traits)})"


def read_state_dict(source, sha256: str | None = None) -> dict:
    """The raw tensors of any checkpoint file (path, URL, hf-hub: file or registered name), unwrapped from
    training dicts and DDP/compile prefixes but with the original key names (for non-RepViT models)."""
    raw, _ = _read_file(resolve_source(source, sha256))
    return strip_wrappers(raw)


def read_checkpoint(source, sha256: str | None = None) -> Checkpoint:
    """Read ``source`` (path, URL, hf-hub: file, registered name, or an already-read :class:`Checkpoint`)."""
    if isinstance(source, Checkpoint):
        if sha256:
            raise ValueError("sha256 applies to a file or URL, not to an already-read Checkpoint")
        return source
    path = resolve_source(source, sha256)
    raw, metadata = _read_file(path)
    state, fmt = convert_state_dict(raw)
    return Checkpoint(state, path, fmt, metadata)


@functools.lru_cache(maxsize=None)
def _backbone_shapes(arch: str, deployed: bool, legacy: bool) -> dict[str, tuple]:
    """Key -> shape of a variant's backbone (no head), from a model built on the meta device.

    ``legacy`` builds the variant with the v1 token mixer whatever its registered form, so that a
    legacy-trained checkpoint of a v2 variant is still recognised.
    """
    with torch.device("meta"):
        model = RepViT(dataclasses.replace(get_variant(arch).spec, legacy=legacy), num_classes=0)
        if deployed:
            model = reparameterize(model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head.")}


def _matching_variants(state: dict, deployed: bool, legacy: bool) -> list[str]:
    """Registered variants whose backbone has exactly the checkpoint's tensors (else: of which the
    checkpoint is a truncated backbone). Variants in their registered form are tried first; a
    legacy checkpoint is then compared with the v2 variants built with the legacy token mixer."""
    backbone = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("head.")}
    v1 = [a for a in list_models() if get_variant(a).spec.legacy]
    v2 = [a for a in list_models() if a not in v1]
    if deployed:  # both token-mixer forms fuse to the same structure
        groups = [(v2, False)]
    elif legacy:
        groups = [(v1, True), (v2, True)]
    else:
        groups = [(v2, False)]
    for names, as_legacy in groups:
        shapes = {a: _backbone_shapes(a, deployed, as_legacy) for a in names}
        found = [a for a in names if shapes[a] == backbone]
        found = found or [a for a in names if backbone and all(shapes[a].get(k) == s for k, s in backbone.items())]
        if found:
            return found
    return []
