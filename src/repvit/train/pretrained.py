"""Hugging Face Hub folders in timm's format (``repvit export --format timm``) and their upload
(``repvit push-to-hub``).

:func:`save_pretrained` writes a folder that plain timm loads, with no repvit installed, as
``timm.create_model("local-dir:DIR", pretrained=True)`` and, once uploaded with :func:`push_to_hub`,
as ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)``:

* ``config.json`` - timm's schema (what ``timm.models.save_for_hf`` writes and
  ``load_model_config_from_hf`` reads): ``architecture``, ``num_classes``, ``label_names``,
  ``model_args`` (the distillation head) and ``pretrained_cfg`` (input size, crop, interpolation,
  mean/std, classifier names);
* ``model.safetensors`` - the training structure in timm's key layout. timm's ``repvit_*`` is the
  un-fused model and fusing cannot be undone, so reparameterized weights are refused;
* ``README.md`` - the model card: data, recipe and metrics of the ``repvit train`` run the weights
  come from (its checkpoint and ``metrics.jsonl``), latency when given, usage, citation, license.

Only architectures timm has (``timm.list_models("repvit*")``) can be written; the folder counts as
written once timm has reloaded it and given the model's logits.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import yaml
from huggingface_hub import HfApi, get_token
from torch import nn

from ..data import EVAL_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from ..export import parity_tolerance
from ..factory import create_model
from ..models import MIN_INPUT_SIZE, RepViT, RepViTFeatures, get_variant
from ..utils import UserError, __version__, first_line, param
from ..weights import (
    CheckpointError,
    atomic_write,
    first_mismatch,
    load_torch_file,
    read_checkpoint,
    save_weights,
    to_timm,
)
from ..weights.download import is_network_error, is_remote
from ..weights.files import TEMPORARY_NAME
from ..weights.registry import registered_weights
from .recipe import PER_RUN_KEYS
from .run_folder import METRICS

__all__ = ["save_pretrained", "push_to_hub", "timm_architecture", "HUB_FILES", "REPO_PLACEHOLDER"]

log = logging.getLogger(__name__)

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
#: What :func:`save_pretrained` writes: a folder holding only these can be written again.
HUB_FILES = (CONFIG, WEIGHTS, CARD)
#: The repository id in the card's usage lines until :func:`push_to_hub` knows the real one.
REPO_PLACEHOLDER = "ORG/NAME"

CITATION = """@inproceedings{wang2024repvit,
  title={RepViT: Revisiting Mobile CNN From ViT Perspective},
  author={Wang, Ao and Chen, Hui and Lin, Zijia and Han, Jungong and Ding, Guiguang},
  booktitle={CVPR},
  year={2024}
}"""

# The pretrained_cfg fields timm's own Hub configs carry (a timm that reads the file builds a
# PretrainedCfg from them: fields an older timm lacks would fail it).
_CFG_FIELDS = ("custom_load", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean",
               "std", "num_classes", "pool_size", "first_conv", "classifier", "license")
# Recipe keys of one invocation or one machine: not part of how the weights were trained.
_MACHINE_KEYS = (*PER_RUN_KEYS, "output", "device", "workers")
_PATH_KEYS = ("data", "finetune", "teacher_weights")
# The recipe lines the card shows first (the full recipe follows, folded).
_RECIPE_SUMMARY = ("model", "epochs", "img_size", "batch_size", "opt", "lr", "weight_decay", "warmup_epochs",
                   "auto_augment", "mixup", "cutmix", "smoothing", "model_ema", "distillation", "teacher", "finetune")
_METRIC_NAMES = {"val_top1": "val top-1 (%)", "val_top5": "val top-5 (%)", "val_loss": "val loss",
                 "ema_val_top1": "EMA val top-1 (%)", "train_loss": "train loss", "top1": "top-1 (%)",
                 "top5": "top-5 (%)"}


@dataclass
class _Source:
    """What the weights' origin tells the card: a ``repvit train`` run, registered weights, or nothing."""

    label: str | None = None  # the weights as given, for the card
    class_names: list[str] | None = None
    recipe: dict | None = None
    epoch: int | None = None  # 1-based epoch of a run checkpoint
    best: dict | None = None  # the run's best {"top1", "epoch"} when the checkpoint was written
    records: list[dict] = field(default_factory=list)  # metrics.jsonl (else the checkpoint's history)
    metrics: dict = field(default_factory=dict)
    dataset: str | None = None


def save_pretrained(model, out_dir, *, weights=None, class_names: list[str] | None = None,
                    metrics: dict | None = None, latency: dict | None = None, img_size: int | None = None,
                    crop_pct: float | None = None, dataset: str | None = None) -> Path:
    """Write ``model`` as a Hugging Face Hub folder that plain timm loads (see the module docstring).

    Args:
        model: a RepViT classifier in the training structure, or a registered model name to build
            with ``weights``. A reparameterized model is refused: timm's model is the un-fused one.
        out_dir: the folder to write: new, empty, or an earlier one of these (its files are replaced).
        weights: with a model name, the checkpoint to publish (path, URL, registered name or
            ``hf-hub:`` file). A ``repvit train`` checkpoint (``checkpoint-best.pth``) also gives
            the card its class names, recipe, data and metrics (``metrics.jsonl`` of its run folder).
        class_names: the classifier's labels, in order (default: the checkpoint's, when it has them).
        metrics: ``{name: value}`` for the card, over those of the run's record for the checkpoint's epoch.
        latency: ``{setting: milliseconds}`` measured elsewhere (e.g. ``repvit bench``), for the card.
        img_size: the evaluation input size in timm's data config (default: the run's recipe, else
            224, the paper's).
        crop_pct: the evaluation center-crop fraction in timm's data config (default: the run's
            recipe, else 0.875, the paper's).
        dataset: what the model was trained on, in words (default: the run's data folder name).

    Returns the folder.
    """
    out = Path(out_dir)
    _check_target(out)
    net, source = _resolve(model, weights)
    timm_state = to_timm(net.state_dict())
    arch = timm_architecture(net, timm_state)
    names = class_names if class_names is not None else source.class_names
    if names is not None and len(names) != net.num_classes:
        raise UserError(f"{param('class_names')} has {len(names)} names, the model has {net.num_classes} classes")
    recipe = source.recipe or {}
    size = img_size if img_size is not None else recipe.get("img_size") or 224
    if size < MIN_INPUT_SIZE:
        raise UserError(f"{param('img_size')} must be at least {MIN_INPUT_SIZE}, got {size}")
    crop = crop_pct if crop_pct is not None else recipe.get("crop_pct") or EVAL_CROP_PCT
    if not 0 < crop <= 1:
        raise UserError(f"{param('crop_pct')} must be in (0, 1], got {crop}")
    config = timm_config(net, arch, names, size, crop, recipe.get("interpolation") or "bicubic")
    card_metrics = {**source.metrics, **(metrics or {})}
    dataset = dataset or source.dataset

    # repvit's reader takes the class names from the metadata; timm ignores it ("pt": timm's format tag).
    save_weights(net, out / WEIGHTS, class_names=names, metadata={"format": "pt"}, state_dict=timm_state)
    atomic_write(out / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    card = model_card(net, arch, config, source, card_metrics, latency, dataset)
    atomic_write(out / CARD, lambda tmp: tmp.write_text(card))
    _check_with_timm(net, out, config["pretrained_cfg"]["input_size"])
    log.info("wrote %s (%s): timm.create_model(\"local-dir:%s\", pretrained=True)", out, ", ".join(HUB_FILES), out)
    return out


def timm_architecture(model: nn.Module, timm_state: dict | None = None) -> str:
    """The timm architecture ``model`` is, checked tensor by tensor against timm's model of that
    name; otherwise a one-line :class:`UserError` saying why plain timm could not load it.
    ``timm_state``: ``to_timm(model.state_dict())`` when the caller already has it."""
    if isinstance(model, RepViTFeatures):
        raise UserError(f"{model.name}: a features_only backbone; save the classifier model (timm builds "
                        "features_only from it)")
    if not isinstance(model, RepViT):
        raise UserError(f"expected a RepViT model from repvit.create_model, got {type(model).__name__}")
    if model.deployed:
        raise UserError(f"{model.name}: reparameterized (deployed); timm's model is the training structure and "
                        "fusing cannot be undone: save the model before repvit.reparameterize, or its training "
                        "checkpoint (e.g. checkpoint-best.pth)")
    available = timm.list_models("repvit*")
    if model.name not in available:
        raise UserError(f"{model.name}: timm has no {model.name} architecture, so plain timm could not load it "
                        f"(timm has {', '.join(available)}); share it with repvit.save_weights instead")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        reference = timm.create_model(model.name, num_classes=model.num_classes, distillation=model.distillation,
                                      in_chans=model.in_chans)
    problem = first_mismatch(reference.state_dict(), timm_state or to_timm(model.state_dict()), what="this model")
    if problem:
        raise UserError(f"{model.name}: its structure differs from timm's {model.name} ({problem}), so plain timm "
                        "could not load it")
    return model.name


def timm_config(model: RepViT, arch: str, class_names, img_size: int, crop_pct: float, interpolation: str) -> dict:
    """config.json as timm writes it for ``model`` (``timm.models.save_for_hf``), with the
    evaluation preprocessing given."""
    cfg = timm.models.get_pretrained_cfg(arch).to_dict()  # the architecture's defaults (first_conv, license, ...)
    pretrained = {k: cfg[k] for k in _CFG_FIELDS if cfg.get(k) is not None}
    pool = img_size // 32 if img_size % 32 == 0 else None  # the pool size is only meaningful when exact
    pretrained.update(
        custom_load=False, input_size=[model.in_chans, img_size, img_size], interpolation=interpolation,
        crop_pct=crop_pct, mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD),
        num_classes=model.num_classes, pool_size=[pool, pool] if pool else None,
        # the names timm drops when a user asks for other classes: only the heads there are
        classifier=["head.head.l", "head.head_dist.l"] if model.distillation else "head.head.l",
    )
    config = {"architecture": arch, "num_classes": model.num_classes, "num_features": model.num_features,
              "global_pool": "avg"}
    if class_names is not None:
        config["label_names"] = list(class_names)
    # timm's RepViT builds a distillation head unless told otherwise: the flag must travel with the weights.
    config["model_args"] = {"num_classes": model.num_classes, "distillation": model.distillation,
                            "in_chans": model.in_chans, "global_pool": "avg"}
    config["pretrained_cfg"] = pretrained
    return config


def push_to_hub(folder, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload a :func:`save_pretrained` folder to the Hub repository ``repo_id`` (created if needed,
    ``private`` then); returns the commit's URL. The token is huggingface_hub's (``HF_TOKEN`` or
    ``hf auth login``). The uploaded card's usage lines name the repository; ``folder`` is left as it is."""
    folder = Path(folder)
    _check_hub_folder(folder)
    token = get_token()
    if token is None:
        raise UserError("no Hugging Face token: log in with `hf auth login`, or set HF_TOKEN to a token with "
                        "write access (https://huggingface.co/settings/tokens)")
    api = HfApi(token=token, library_name="repvit", library_version=__version__)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision:  # upload_folder needs the branch to exist
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as staging:  # the card names this repository; the folder stays reusable
            staged = Path(staging) / folder.name
            shutil.copytree(folder, staged, ignore=shutil.ignore_patterns("*.tmp", ".*"))
            _fill_repo_id(staged / CARD, repo_id)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(staged), revision=revision,
                                       commit_message=commit_message or f"Upload {_architecture(folder)} with repvit")
    except Exception as err:  # HfHubHTTPError (a bad token, no write access, a bad name: the Hub says which), network
        if not (isinstance(err, OSError) or is_network_error(err)):
            raise
        raise UserError(f"{repo_id}: the upload failed ({first_line(err)})") from None
    log.info("uploaded %s to %s: timm.create_model(\"hf-hub:%s\", pretrained=True)", folder, repo_id, repo_id)
    return str(getattr(commit, "commit_url", commit))


# ----------------------------------------------------------------------------------------------
# Where the weights come from


def _resolve(model, weights) -> tuple[RepViT, _Source]:
    """The model to write (an eval-mode copy) and what its weights' origin says."""
    if not isinstance(model, str):
        if weights is not None:
            raise UserError(f"{param('weights')} applies to a model name; load the weights into the module first")
        return copy.deepcopy(model).float().cpu().eval(), _Source()  # timm's files are float32, checked on the CPU
    get_variant(model)
    if weights is None:
        raise UserError(f"{param('weights')} is required with a model name: the checkpoint to publish")
    checkpoint = read_checkpoint(weights)
    if checkpoint.deployed:
        raise CheckpointError(f"{weights}: reparameterized (deployed) weights; timm's {model} is the training "
                              "structure and fusing cannot be undone: use the training checkpoint (e.g. the run's "
                              "checkpoint-best.pth)")
    net = create_model(model, weights=checkpoint, deploy=False)
    source = _run_source(checkpoint.path) or _registered_source(weights) or _Source()
    source.label = source.label or str(weights)
    source.class_names = source.class_names or checkpoint.class_names
    return net.eval(), source


def _run_source(path: Path) -> _Source | None:
    """The card's facts from a ``repvit train`` checkpoint and its run folder (None for other files)."""
    if path.suffix == ".safetensors":
        return None
    try:
        state = load_torch_file(path, mmap=True)
    except CheckpointError:
        return None
    if not isinstance(state, dict) or state.get("format") != "repvit-train":
        return None
    epoch = int(state["epoch"]) + 1
    records = _read_metrics(path.parent / METRICS) or list(state.get("history") or [])
    record = next((r for r in records if r.get("epoch") == epoch), {})
    recipe = _public_recipe(state.get("recipe") or {})
    return _Source(label=f"{path.name} of a `repvit train` run (epoch {epoch} of {recipe.get('epochs', '?')})",
                   class_names=state.get("class_names"), recipe=recipe, epoch=epoch, best=state.get("best"),
                   records=records, dataset=recipe.get("data"),
                   metrics={k: v for k, v in record.items() if k in _METRIC_NAMES})


def _read_metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (a line cut short by a crash is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _public_recipe(recipe: dict) -> dict:
    """The recipe without per-machine keys, local paths shortened to their last part (a card is public)."""
    out = {k: v for k, v in recipe.items() if k not in _MACHINE_KEYS}
    for key in _PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and not is_remote(value) and registered_weights(value) is None \
                and Path(value).name != value:
            out[key] = Path(value).name
    return out


def _registered_source(weights) -> _Source | None:
    entry = registered_weights(str(weights))
    if entry is None:
        return None
    metrics = {"top1": entry.top1} | ({"top5": entry.top5} if entry.top5 is not None else {})
    return _Source(label=f"{entry.name} ({entry.url}; {entry.source})", metrics=metrics,
                   dataset="ImageNet-1k" if entry.num_classes == 1000 else None)


# ----------------------------------------------------------------------------------------------
# The folder


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; expected a folder for the Hub files")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in HUB_FILES and not p.name.startswith(".")
                        and not TEMPORARY_NAME.fullmatch(p.name))
        if others:
            raise UserError(f"{out}: holds other files ({', '.join(others[:3])}); the whole "
                            "folder is what gets uploaded: choose a new or empty folder")


def _check_hub_folder(folder: Path) -> None:
    """A one-line error unless ``folder`` is a :func:`save_pretrained` folder."""
    what = "expected a folder written by repvit export --format timm (or repvit.save_pretrained)"
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; {what}")
    missing = [name for name in (CONFIG, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: has no {' or '.join(missing)}; {what}")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{folder / CONFIG}: not readable JSON ({first_line(err)}); {what}") from None
    if not isinstance(config, dict) or not isinstance(config.get("pretrained_cfg"), dict) \
            or not str(config.get("architecture", "")).startswith("repvit"):
        raise UserError(f"{folder / CONFIG}: not a timm config of a RepViT (architecture and pretrained_cfg); {what}")


def _architecture(folder: Path) -> str:
    return json.loads((folder / CONFIG).read_text())["architecture"]


def _fill_repo_id(card: Path, repo_id: str) -> None:
    if card.is_file() and REPO_PLACEHOLDER in (text := card.read_text()):
        atomic_write(card, lambda tmp: tmp.write_text(text.replace(REPO_PLACEHOLDER, repo_id)))


@torch.no_grad()
def _check_with_timm(model: RepViT, out: Path, input_size) -> None:
    """Reload the folder as a timm user would and compare its logits with the model's."""
    try:
        reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    except Exception as err:  # any failure here means the folder is not what timm loads
        raise UserError(f"{out}: written, but timm cannot load it ({first_line(err, with_type=True)})") from None
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    expected, got = model(x), reloaded(x)
    diff = float((expected - got).abs().max())
    if diff > parity_tolerance(expected):
        raise UserError(f"{out}: written, but timm's logits differ from the model's by {diff:.2e}")


# ----------------------------------------------------------------------------------------------
# The model card


def model_card(model: RepViT, arch: str, config: dict, source: _Source, metrics: dict, latency: dict | None,
               dataset: str | None) -> str:
    """README.md: Hub metadata, then details, data, recipe, metrics, latency, usage, citation, license."""
    cfg = config["pretrained_cfg"]
    names = config.get("label_names")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    _, height, width = cfg["input_size"]
    resize = round(height / cfg["crop_pct"])
    lines = ["---", "license: apache-2.0", "library_name: timm", "pipeline_tag: image-classification", "tags:",
             "- image-classification", "- timm", "- repvit", "---", "",
             f"# {arch} trained on {dataset}" if dataset else f"# {arch}", "",
             f"A RepViT image classifier (`{arch}`, {model.num_classes} classes) in timm's format: plain "
             f"[timm](https://github.com/huggingface/pytorch-image-models) loads it, no other package needed. "
             f"Written by repvit {__version__}.", "", "## Model details", "",
             f"- **Architecture:** `{arch}` (RepViT, CVPR 2024), training structure"
             + (" with a distillation head" if model.distillation else ""),
             f"- **Parameters:** {params:.2f} M",
             f"- **Classes:** {model.num_classes}" + (f": {_listed(names)}" if names else ""),
             f"- **Input:** {cfg['input_size'][0]}x{height}x{width}: resize to {resize} ({cfg['interpolation']}), "
             f"center-crop {height}, ImageNet mean/std (crop_pct {cfg['crop_pct']:g})"]
    if source.label:
        lines.append(f"- **Weights:** {source.label}")
    lines += ["", "## Data", "", f"Trained on {dataset}." if dataset else "Not recorded."]
    lines += ["", "## Training recipe", ""] + _recipe_lines(source.recipe)
    lines += ["", "## Metrics", ""] + _metric_lines(metrics, source)
    if latency:
        lines += ["", "## Latency", "", "| setting | ms |", "|---|---|"]
        lines += [f"| {setting} | {_number(ms)} |" for setting, ms in latency.items()]
    lines += ["", "## Usage", "", "With timm (nothing else needed):", "", "```python", "import timm", "import torch",
              "from PIL import Image", "",
              f'model = timm.create_model("hf-hub:{REPO_PLACEHOLDER}", pretrained=True).eval()',
              "config = timm.data.resolve_data_config({}, model=model)",
              "transform = timm.data.create_transform(**config)",
              'image = transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)',
              "with torch.no_grad():", "    probabilities = model(image).softmax(-1)",
              *(['labels = model.pretrained_cfg["label_names"]'] if names else []), "```", "",
              'A local copy of this folder loads with `timm.create_model("local-dir:PATH", pretrained=True)`.', "",
              "With [repvit](https://pypi.org/project/repvit-toolkit/), which also reparameterizes it for deployment:",
              "", "```python", "import repvit", "",
              f'model = repvit.create_model("{arch}", weights="hf-hub:{REPO_PLACEHOLDER}")  # training structure',
              "deployed = repvit.reparameterize(model)  # fused for inference, same outputs", "```", "",
              "```bash", f"repvit predict image.jpg --model {arch} --weights hf-hub:{REPO_PLACEHOLDER}",
              f"repvit export {arch} --weights hf-hub:{REPO_PLACEHOLDER} --format onnx executorch coreml", "```",
              "", "## Citation", "", "```bibtex", CITATION, "```", "", "## License", "",
              "Apache-2.0, as the RepViT reference implementation (https://github.com/THU-MIG/RepViT).", ""]
    return "\n".join(lines)


def _recipe_lines(recipe: dict | None) -> list[str]:
    if not recipe:
        return ["Not recorded (these weights are not a `repvit train` checkpoint)."]
    shown = [k for k in _RECIPE_SUMMARY if recipe.get(k) not in (None, "", "none")
             and not (k == "teacher" and recipe.get("distillation") == "none")]
    lines = ["| key | value |", "|---|---|"] + [f"| {k} | `{recipe[k]}` |" for k in shown]
    full = yaml.safe_dump(recipe, sort_keys=False).rstrip()
    return lines + ["", "<details><summary>The full recipe (recipe.yaml; <code>repvit train --config</code> takes "
                    "it)</summary>", "", "```yaml", full, "```", "", "</details>"]


def _metric_lines(metrics: dict, source: _Source) -> list[str]:
    if not metrics:
        return ["Not recorded."]
    where = f" (epoch {source.epoch})" if source.epoch else ""
    lines = [f"| metric{where} | value |", "|---|---|"]
    lines += [f"| {_METRIC_NAMES.get(k, k)} | {_number(v)} |" for k, v in metrics.items()]
    best = source.best or {}
    if source.epoch and best.get("epoch", -1) > 0:
        lines += ["", f"Best val top-1 of the run when these weights were saved: {_number(best['top1'])} at epoch "
                  f"{best['epoch']}."]
    if len(source.records) > 1:
        lines += ["", f"The run logged {len(source.records)} epochs (`{METRICS}` of its folder)."]
    return lines


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _listed(names, limit: int = 20) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
