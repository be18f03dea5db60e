"""Weights: the registry of release checkpoints, reading any supported checkpoint, saving ours.

Supported checkpoint layouts, recognised from their keys (no manual key editing):

* ``official`` - THU-MIG/RepViT releases: ``{"model": state_dict}`` with a flat ``features.N`` list
  and ``classifier.classifier`` / ``classifier.classifier_dist`` heads (training or fused form).
* ``timm`` - timm's ``repvit_*`` state dicts (``stem.``, ``stages.``, ``head.head``), training or fused.
* ``repvit`` - this package's own format (safetensors preferred, written by :func:`save_weights`),
  training or reparameterized.

All key renaming lives in :func:`convert_state_dict`. A checkpoint that does not fit the model is
an error naming the first mismatching tensor and the variant the checkpoint looks like.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import pickle
import re
import sys
import urllib.error
import urllib.parse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .models import RepViT, RepViTFeatures, get_variant, list_models

__all__ = [
    "CheckpointError",
    "WeightEntry",
    "Checkpoint",
    "list_weights",
    "get_weight_entry",
    "default_weights",
    "read_checkpoint",
    "convert_state_dict",
    "load_weights",
    "save_weights",
    "cache_dir",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, downloaded or loaded into the requested model."""


# ----------------------------------------------------------------------------------------------
# Registry of release checkpoints
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightEntry:
    """A published checkpoint. ``top1``/``top5`` are the best-epoch ImageNet-1k accuracies from the
    official training logs (what the paper reports), not measured by this package."""

    name: str  # "<arch>.<tag>"
    url: str
    top1: float
    top5: float | None
    epochs: int
    sha256: str | None = None  # not published upstream; pass sha256= to verify a download
    distillation: bool = True
    num_classes: int = 1000
    source: str = "official training log (best epoch)"

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]


_V2_RELEASE = "https://github.com/THU-MIG/RepViT/releases/download/v1.0/"
_V1_RELEASE = "https://github.com/jameslahm/RepViT/releases/download/v1.0/"

_WEIGHTS: dict[str, WeightEntry] = {}
_DEFAULT_TAG: dict[str, str] = {}


def _register_weights(entry: WeightEntry, default: bool = False) -> None:
    if entry.name in _WEIGHTS:
        raise ValueError(f"weights {entry.name!r} are already registered")
    get_variant(entry.arch)  # must name a real model
    _WEIGHTS[entry.name] = entry
    if default:
        _DEFAULT_TAG[entry.arch] = entry.name


for _arch, _r300, _r450 in (
    ("m0_9", (78.738, 94.01), (79.112, 94.23)),
    ("m1_0", (80.012, 94.76), (80.262, 94.91)),
    ("m1_1", (80.686, 95.15), (81.188, 95.44)),
    ("m1_5", (82.290, 95.94), (82.478, 96.04)),
    ("m2_3", (83.304, 96.47), (83.674, 96.57)),
):
    _register_weights(WeightEntry(f"repvit_{_arch}.dist_300e", f"{_V2_RELEASE}repvit_{_arch}_distill_300e.pth", *_r300, 300))
    _register_weights(WeightEntry(f"repvit_{_arch}.dist_450e", f"{_V2_RELEASE}repvit_{_arch}_distill_450e.pth", *_r450, 450), default=True)
_register_weights(
    WeightEntry("repvit_m0_6.dist_300e", f"{_V2_RELEASE}repvit_m0_6_distill_300e.pth", 74.1, None, 300,
                source="official README"),
    default=True,
)
for _arch, _r300 in (("m1", (78.468, 93.94)), ("m2", (80.570, 95.04)), ("m3", (81.432, 95.55))):
    _register_weights(WeightEntry(f"repvit_{_arch}.dist_300e", f"{_V1_RELEASE}repvit_{_arch}_distill_300.pth", *_r300, 300), default=True)


def list_weights(pattern: str = "*") -> list[str]:
    """Registered weight names (``"<arch>.<tag>"``), optionally filtered by an fnmatch pattern."""
    import fnmatch

    return sorted(n for n in _WEIGHTS if fnmatch.fnmatch(n, pattern))


def get_weight_entry(name: str) -> WeightEntry:
    if name in _WEIGHTS:
        return _WEIGHTS[name]
    arch = name.split(".", 1)[0]
    known = list_weights(f"{arch}.*") or list_weights()
    raise CheckpointError(f"unknown weights {name!r}; registered weights: {', '.join(known)}")


def default_weights(arch: str) -> str | None:
    """The recommended registered weights of a model (the longest schedule), or None."""
    get_variant(arch)
    return _DEFAULT_TAG.get(arch)


def cache_dir() -> Path:
    """Where downloaded checkpoints live: the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


# ----------------------------------------------------------------------------------------------
# Resolving a source to a local file
# ----------------------------------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, sha256: str | None, registered: bool = False) -> Path:
    filename = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    if not registered:  # different URLs often share a file name ("model.safetensors")
        filename = f"{hashlib.sha256(url.encode()).hexdigest()[:10]}-{filename}"
    target = cache_dir() / filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, target)
        try:
            # Writes to a temporary file and renames it, so an interrupted download leaves nothing.
            torch.hub.download_url_to_file(url, str(target), progress=sys.stderr.isatty())
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise CheckpointError(
                f"could not download {url} ({reason}). If this machine is offline, download the file "
                f"on one that is online and pass its local path instead, or copy it to {target}"
            ) from None
    if sha256:
        actual = _sha256_of(target)
        if actual != sha256.lower():
            target.unlink()
            raise CheckpointError(
                f"{url}: sha256 of the downloaded file is {actual}, expected {sha256}; the file was removed"
            )
    return target


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")


def resolve_source(source, sha256: str | None = None) -> Path:
    """A local path for ``source``: a path, an ``http(s)://`` URL (cached) or a registered name."""
    if isinstance(source, WeightEntry):
        source = source.name
    text = str(source)
    if text.startswith(("https://", "http://")):
        return _download(text, sha256)
    if text in _WEIGHTS:
        entry = _WEIGHTS[text]
        return _download(entry.url, sha256 or entry.sha256, registered=True)
    path = Path(text).expanduser()
    if path.is_file():
        if sha256 and _sha256_of(path) != sha256.lower():
            raise CheckpointError(f"{path}: sha256 does not match the expected {sha256}")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a directory; expected a checkpoint file")
    if "/" not in text and "." in text and path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
        get_weight_entry(text)  # looks like "<arch>.<tag>": raises with the registered names
    raise CheckpointError(
        f"{text}: no such file. Expected a local checkpoint path, an https:// URL or a registered "
        f"weight name such as {default_weights('repvit_m0_9')} (see `repvit models`)"
    )


# ----------------------------------------------------------------------------------------------
# Reading files and converting keys
# ----------------------------------------------------------------------------------------------


def _short_reason(err: Exception) -> str:
    """The informative sentence of a (often multi-paragraph) loader error."""
    text = str(err)
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    text = detail.group(1) if detail else text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0].split(". ")[0] if lines else type(err).__name__)[:200]


def _read_file(path: Path) -> tuple[dict, dict]:
    """Raw tensors (unwrapped from training-checkpoint dicts) and any metadata."""
    with open(path, "rb") as f:
        head = f.read(9)
    is_safetensors = path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")
    try:
        if is_safetensors:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            return tensors, metadata
        # Official training checkpoints also pickle their argparse.Namespace of arguments.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad header, EOF, ...: all mean "not a readable file"
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and unsafe:
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors ({unsafe.group(1)}), which are not "
                "loaded for safety; re-save just its state dict"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt file?): {_short_reason(err)}") from None

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


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _strip_wrappers(state: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# Official flat layout: sub-key prefixes per kind of row -> our names. The first match wins.
_OFFICIAL_STEM = (("0.", "stem.conv1."), ("2.", "stem.conv2."))
_OFFICIAL_BLOCK = (
    ("token_mixer.0.conv.", "token_mixer.conv3x3."),
    ("token_mixer.0.conv1.", "token_mixer.conv1x1."),
    ("token_mixer.0.bn.", "token_mixer.bn."),
    ("token_mixer.0.", "token_mixer."),  # fused RepVGGDW
    ("token_mixer.1.", "se."),
    ("channel_mixer.m.0.", "channel_mixer.expand."),
    ("channel_mixer.m.2.", "channel_mixer.project."),
)
_OFFICIAL_DOWN = (
    ("token_mixer.0.", "spatial."),
    ("token_mixer.2.", "channel."),
    ("channel_mixer.m.0.", "ffn.expand."),
    ("channel_mixer.m.2.", "ffn.project."),
)
_OFFICIAL_HEAD = (
    ("classifier.classifier_dist.", "head.head_dist."),
    ("classifier.classifier.", "head.head."),
    ("classifier.", "head."),  # fused single head
)

# Segment renames for timm (keyed by the preceding segment; "*" = any) and for the official
# Conv2d_BN ("c") / BN_Linear ("l") sub-modules. They leave this package's own keys unchanged.
_SEGMENT_RENAMES = {
    ("token_mixer", "conv"): "conv3x3",
    ("token_mixer", "conv1"): "conv1x1",
    ("channel_mixer", "conv1"): "expand",
    ("channel_mixer", "conv2"): "project",
    ("ffn", "conv1"): "expand",
    ("ffn", "conv2"): "project",
    ("*", "spatial_downsample"): "spatial",
    ("*", "channel_downsample"): "channel",
    ("*", "c"): "conv",
    ("*", "l"): "linear",
}


def _rename_segments(key: str) -> str:
    parts = key.split(".")
    out = [parts[0]]
    for prev, seg in zip(parts, parts[1:]):
        out.append(_SEGMENT_RENAMES.get((prev, seg)) or _SEGMENT_RENAMES.get(("*", seg)) or seg)
    return ".".join(out)


def _apply_table(sub: str, table, key: str) -> str:
    for old, new in table:
        if sub.startswith(old):
            return new + sub[len(old):]
    raise CheckpointError(f"unrecognised key {key!r} in an official RepViT checkpoint")


_OFFICIAL_ROW = re.compile(r"features\.(\d+)\.(.+)")


def _convert_official(state: dict) -> dict:
    for key in state:
        if key.startswith("features.") and not _OFFICIAL_ROW.fullmatch(key):
            raise CheckpointError(f"unrecognised key {key!r} in an official RepViT checkpoint")
    rows = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    strided = {r for r in rows if any(k.startswith(f"features.{r}.token_mixer.2.") for k in state)}
    prefixes, stage, block = {0: ("stem", None)}, 0, 0
    for r in rows[1:]:
        if r + 1 in strided:  # the block the paper counts as part of the next downsampling layer
            prefixes[r] = (f"stages.{stage + 1}.downsample.pre_block.", _OFFICIAL_BLOCK)
        elif r in strided:
            stage, block = stage + 1, 0
            prefixes[r] = (f"stages.{stage}.downsample.", _OFFICIAL_DOWN)
        else:
            prefixes[r] = (f"stages.{stage}.blocks.{block}.", _OFFICIAL_BLOCK)
            block += 1
    out = {}
    for key, value in state.items():
        if key.startswith("features."):
            row, sub = _OFFICIAL_ROW.fullmatch(key).groups()
            prefix, table = prefixes[int(row)]
            new = _apply_table(sub, _OFFICIAL_STEM, key) if prefix == "stem" else prefix + _apply_table(sub, table, key)
        elif key.startswith("classifier."):
            new = _apply_table(key, _OFFICIAL_HEAD, key)
        else:
            raise CheckpointError(f"unrecognised key {key!r} in an official RepViT checkpoint")
        out[_rename_segments(new)] = value
    return out


def convert_state_dict(state: dict) -> tuple[dict, str]:
    """Rename an official, timm or repvit state dict to this package's keys.

    Returns ``(state_dict, format)`` with format ``"official"``, ``"timm"`` or ``"repvit"``.
    """
    state = _strip_wrappers(dict(state))
    if any(k.startswith(("features.", "classifier.")) for k in state):
        return _convert_official(state), "official"
    # timm's features_only wrapper flattens "stages.N" into "stages_N".
    renamed = {_rename_segments(re.sub(r"^stages_(\d+)\.", r"stages.\1.", k)): v for k, v in state.items()}
    return renamed, ("repvit" if list(renamed) == list(state) else "timm")


def _legacy_to_current(state: dict, eps: float = 1e-5) -> dict:
    """Rewrite legacy (v1) token mixers as the current form, exactly equal in eval mode.

    The 1x1 branch's BatchNorm is folded into a biased 1x1 conv, and the BatchNorm after the sum
    becomes an identity (weight 1, bias 0, mean 0, var 1 - eps).
    """
    out = dict(state)
    for key in [k for k in state if k.endswith("token_mixer.conv1x1.conv.weight")]:
        p = key[: -len("conv1x1.conv.weight")]
        g, b = state[p + "conv1x1.bn.weight"], state[p + "conv1x1.bn.bias"]
        mean, var = state[p + "conv1x1.bn.running_mean"], state[p + "conv1x1.bn.running_var"]
        scale = g / torch.sqrt(var + eps)
        for name in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
            out.pop(p + "conv1x1." + name, None)
        out[p + "conv1x1.weight"] = state[key] * scale.reshape(-1, 1, 1, 1)
        out[p + "conv1x1.bias"] = b - mean * scale
        out[p + "bn.weight"] = torch.ones_like(g)
        out[p + "bn.bias"] = torch.zeros_like(g)
        out[p + "bn.running_mean"] = torch.zeros_like(g)
        out[p + "bn.running_var"] = torch.full_like(g, 1.0 - eps)
        out[p + "bn.num_batches_tracked"] = torch.tensor(0)
    return out


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


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
    """The raw tensors of any checkpoint file (path, URL or registered name), unwrapped from
    training dicts and DDP/compile prefixes but with the original key names (for non-RepViT models)."""
    raw, _ = _read_file(resolve_source(source, sha256))
    return _strip_wrappers(raw)


def read_checkpoint(source, sha256: str | None = None) -> Checkpoint:
    """Read ``source`` (path, URL, registered name, or an already-read :class:`Checkpoint`)."""
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
            from .reparam import reparameterize

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


def _model_summary(model: nn.Module) -> str:
    traits = []
    if isinstance(model, RepViT):
        traits.append(f"num_classes={model.num_classes}")
        traits += ["distillation"] * model.distillation
    else:
        traits.append(f"features_only, out_indices={model.out_indices}")
    traits += ["reparameterized"] * model.deployed + ["legacy token mixer"] * model.spec.legacy
    return f"{model.name} ({', '.join(traits)})"


def _fill_batch_counters(expected: dict, state: dict) -> dict:
    """BatchNorm's ``num_batches_tracked`` is not needed for inference; many exports drop it."""
    missing = [k for k in expected if k.endswith("num_batches_tracked") and k not in state]
    return {**state, **{k: torch.zeros_like(expected[k]) for k in missing}} if missing else state


def _first_mismatch(expected: dict, state: dict) -> str | None:
    for key, tensor in expected.items():
        if key not in state:
            return f"tensor {key!r} {tuple(tensor.shape)} is missing from the checkpoint"
        if tuple(state[key].shape) != tuple(tensor.shape):
            return f"tensor {key!r} has shape {tuple(state[key].shape)} in the checkpoint, the model expects {tuple(tensor.shape)}"
    extra = [k for k in state if k not in expected]
    if extra:
        return f"the checkpoint has tensor {extra[0]!r} {tuple(state[extra[0]].shape)}, which the model does not"
    return None


def _stage_index(key: str) -> int:
    """The stage a backbone key belongs to (-1 for the stem and anything outside the stages)."""
    match = re.match(r"stages\.(\d+)\.", key)
    return int(match.group(1)) if match else -1


def _training_twin(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
    """An un-fused model of the same kind as the deployed ``model``, to load training weights into."""
    if isinstance(model, RepViTFeatures):
        return RepViTFeatures(model.spec, out_indices=model.out_indices, in_chans=model.in_chans, name=model.name)
    return RepViT(model.spec, num_classes=model.num_classes, distillation=checkpoint.distillation,
                  in_chans=model.in_chans, name=model.name)


def load_weights(model: nn.Module, source, *, sha256: str | None = None, ignore_head: bool = False) -> Checkpoint:
    """Load ``source`` into ``model`` (strictly: every tensor, or a clear error).

    ``source``: local path, ``https://`` URL, registered weight name or a :class:`Checkpoint`.
    Training checkpoints also load into reparameterized models (loaded unfused, then fused), a
    legacy (v1) token mixer converts exactly into the current form, and feature backbones ignore
    the classifier. ``ignore_head`` loads everything but the classifier (which keeps its current
    weights), for fine-tuning on other classes. Returns the :class:`Checkpoint` that was loaded.
    """
    if not isinstance(model, (RepViT, RepViTFeatures)):
        raise TypeError(f"load_weights expects a RepViT model from repvit.create_model, got {type(model).__name__}")
    checkpoint = read_checkpoint(source, sha256)
    state = checkpoint.state_dict
    if model.deployed and checkpoint.deployed is False:
        if ignore_head:
            raise CheckpointError("ignore_head applies to training-structure models; reparameterize after loading")
        twin = _training_twin(model, checkpoint)
        load_weights(twin, checkpoint)
        from .reparam import reparameterize

        model.load_state_dict(reparameterize(twin).state_dict())
        return checkpoint
    if checkpoint.legacy and not model.spec.legacy and not model.deployed:
        state = _legacy_to_current(state)
        log.info("%s: converted the legacy (v1) token mixer to the current form (exact in eval mode)", checkpoint.path)
    expected = model.state_dict()
    if isinstance(model, RepViTFeatures):  # a backbone takes what it needs from a classifier checkpoint
        state = {k: v for k, v in state.items() if not k.startswith("head.") and _stage_index(k) < len(model.stages)}
    if ignore_head:
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    state = _fill_batch_counters(expected, state)

    problem = _first_mismatch(expected, state)
    if problem:
        hints = []
        if checkpoint.deployed is None:
            hints.append("its keys are not a RepViT layout this package knows (official, timm or repvit)")
        elif checkpoint.deployed and not model.deployed:
            hints.append("the checkpoint is reparameterized: build the model with deploy=True")
        elif isinstance(model, RepViT) and checkpoint.distillation != model.distillation and not model.deployed:
            hints.append(f"build the model with distillation={checkpoint.distillation}")
        if isinstance(model, RepViT) and checkpoint.num_classes != model.num_classes:
            hints.append(f"the checkpoint has {checkpoint.num_classes} classes" if checkpoint.num_classes else
                         "the checkpoint has no classifier: use num_classes=0 or features_only=True")
        hint = f" Hint: {'; '.join(hints)}." if hints else ""
        raise CheckpointError(
            f"{checkpoint.path}: does not fit {_model_summary(model)}: {problem}. "
            f"The checkpoint looks like {checkpoint.describe()}.{hint}"
        )
    missing, _ = model.load_state_dict(state, strict=not ignore_head)
    assert all(k.startswith("head.") for k in missing)  # everything else was checked above
    return checkpoint


def save_weights(model: nn.Module, path, *, class_names: list[str] | None = None, metadata: dict | None = None) -> Path:
    """Save ``model``'s weights in this package's format, atomically (temp file + rename).

    ``.safetensors`` (preferred) stores the tensors plus string metadata (model name, classes,
    whether it is reparameterized); ``.pt``/``.pth`` store ``{"model": state_dict, "repvit_metadata": ...}``.
    """
    path = Path(path)
    info = {
        "format": "repvit",
        "model": getattr(model, "name", type(model).__name__),
        "num_classes": str(getattr(model, "num_classes", "")),
        "deployed": str(bool(getattr(model, "deployed", False))),
    }
    if class_names is not None:
        if len(class_names) != getattr(model, "num_classes", len(class_names)):
            raise ValueError(f"class_names has {len(class_names)} names, the model has {model.num_classes} classes")
        info["class_names"] = json.dumps(list(class_names))
    info.update({k: str(v) for k, v in (metadata or {}).items()})
    # Contiguous clones: safetensors refuses shared or strided storage.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata=info)
    else:
        torch.save({"model": state, "repvit_metadata": info}, tmp)
    tmp.replace(path)
    return path
