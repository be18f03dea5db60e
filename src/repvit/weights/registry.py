"""The registry of released checkpoints (``"<arch>.<tag>"`` names), with their published accuracy."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..models import get_variant
from .files import CheckpointError

__all__ = ["WeightEntry", "list_weights", "get_weight_entry", "default_weights", "registered_weights"]


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
    #: The same weights on the Hugging Face Hub (timm's re-upload, in timm's key layout), tried when
    #: the GitHub release cannot be downloaded.
    hf_hub_id: str | None = None

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def hub_source(self) -> str | None:
        """The Hub alternate as a weight source (``"hf-hub:timm/..."``), or None."""
        return f"hf-hub:{self.hf_hub_id}:model.safetensors" if self.hf_hub_id else None  # what timm publishes


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
    for _epochs, _result in ((300, _r300), (450, _r450)):
        _register_weights(WeightEntry(f"repvit_{_arch}.dist_{_epochs}e",
                                      f"{_V2_RELEASE}repvit_{_arch}_distill_{_epochs}e.pth", *_result, _epochs,
                                      hf_hub_id=f"timm/repvit_{_arch}.dist_{_epochs}e_in1k"),
                          default=_epochs == 450)
_register_weights(  # not on the Hub: timm has no M0.6
    WeightEntry("repvit_m0_6.dist_300e", f"{_V2_RELEASE}repvit_m0_6_distill_300e.pth", 74.1, None, 300,
                source="official README"),
    default=True,
)
for _arch, _r300 in (("m1", (78.468, 93.94)), ("m2", (80.570, 95.04)), ("m3", (81.432, 95.55))):
    _register_weights(WeightEntry(f"repvit_{_arch}.dist_300e", f"{_V1_RELEASE}repvit_{_arch}_distill_300.pth",
                                  *_r300, 300, hf_hub_id=f"timm/repvit_{_arch}.dist_in1k"), default=True)


def list_weights(pattern: str = "*") -> list[str]:
    """Registered weight names (``"<arch>.<tag>"``), optionally filtered by an fnmatch pattern."""
    return sorted(n for n in _WEIGHTS if fnmatch.fnmatch(n, pattern))


def get_weight_entry(name: str) -> WeightEntry:
    if name in _WEIGHTS:
        return _WEIGHTS[name]
    arch = name.split(".", 1)[0]
    known = list_weights(f"{arch}.*") or list_weights()
    raise CheckpointError(f"unknown weights {name!r}; registered weights: {', '.join(known)}")


def registered_weights(name: str) -> WeightEntry | None:
    """The entry registered under exactly ``name``, or None."""
    return _WEIGHTS.get(name)


def default_weights(arch: str) -> str | None:
    """The recommended registered weights of a model (the longest schedule), or None."""
    get_variant(arch)
    return _DEFAULT_TAG.get(arch)
