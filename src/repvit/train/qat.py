"""Quantization-aware fine-tuning (QAT) of the deployed model, for when post-training int8 loses too much.

The network is reparameterized first (QAT learns the weights that will really be quantized: the
fused 3x3 depthwise kernels, not the branches), captured with ``torch.export`` and prepared with
the XNNPACK quantizer in QAT mode (fake-quantized per-channel int8 weights and int8 activations).
``repvit train --qat --finetune CKPT`` trains that graph for a few epochs with the usual loop
(:mod:`repvit.train.classification`) and finally converts the best checkpoint to a real int8
ExecuTorch program (``model-best-int8.pte``).

Observers learn activation ranges while training and are frozen while evaluating, so evaluation
measures the simulated int8 model without changing it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..data import batch_samples
from ..export import evaluate_artifact, export_executorch, load_executorch
from ..export.executorch import xnnpack_quantizer
from ..factory import create_model
from ..reparam import reparameterize
from ..utils import UserError, param
from ..weights import read_checkpoint
from .checkpoint import read_run_checkpoint
from .evaluate import build_eval_loader
from .recipe import TrainRecipe

__all__ = ["QATModel", "QAT_OFF", "prepare_qat", "convert_qat", "qat_model", "export_qat_best"]

log = logging.getLogger(__name__)

#: What --qat turns off: a short fine-tune of the deployed int8 graph (one classifier, no BatchNorm).
QAT_OFF = {"distillation": "none", "model_ema": False, "amp": "off", "channels_last": False, "compile": False,
           "freeze_bn": False, "sync_bn": False, "drop_rate": 0.0}
QAT_NEEDS_FINETUNE = (f"{param('qat')} fine-tunes a trained model: give {param('finetune')} SRC (a checkpoint of "
                      "these classes)")


class QATModel(nn.Module):
    """A fake-quantized graph of a deployed RepViT that trains like a module.

    ``train()``/``eval()`` only turn the observers on/off: the deployed graph has no BatchNorm and
    no active dropout, so nothing else depends on the mode. (torchao's
    ``move_exported_model_to_train`` is deliberately not used: it rewrites every dropout, the
    head's p=0 one included, into a p=0.5 dropout.)
    """

    def __init__(self, graph: nn.Module, num_classes: int):
        super().__init__()
        self.graph = graph
        self.num_classes = num_classes
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> "QATModel":
        from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer

        self.training = mode
        self.graph.apply(enable_observer if mode else disable_observer)
        return self


def prepare_qat(model: nn.Module, img_size: int) -> QATModel:
    """``model`` reparameterized, exported with a dynamic batch and prepared for QAT (XNNPACK int8)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = xnnpack_quantizer(qat=True)
    deployed = reparameterize(model).float()
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in deployed.modules()):
        raise UserError(f"{param('qat')} needs {param('drop_rate')} 0: dropout cannot be switched off inside an "
                        "exported graph")
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    graph = torch.export.export(deployed, (example,), dynamic_shapes=({0: batch},)).module()
    return QATModel(prepare_qat_pt2e(graph, quantizer), deployed.num_classes)


def convert_qat(model: QATModel) -> nn.Module:
    """The int8 graph (quantize/dequantize around int8 kernels) ready for ExecuTorch's XNNPACK lowering."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model.eval()
    return convert_pt2e(model.graph)


def qat_model(recipe: TrainRecipe, num_classes: int, class_names: list[str], resume_path: Path | None) -> QATModel:
    """The fake-quantized graph to fine-tune: from the finetune weights, or the shape to resume into."""
    if resume_path is not None:  # the checkpoint's weights are loaded into the prepared graph later
        return prepare_qat(create_model(recipe.model, num_classes=num_classes), recipe.img_size)
    if not recipe.finetune:
        raise UserError(QAT_NEEDS_FINETUNE)
    source = read_checkpoint(recipe.finetune)
    if source.num_classes != num_classes:
        raise UserError(f"{param('qat')} fine-tunes a model of these classes: {param('finetune')} {recipe.finetune} "
                        f"has {source.num_classes} classes, {param('data')} {num_classes} (train it first without "
                        f"{param('qat')})")
    if source.class_names and source.class_names != class_names:
        raise UserError(f"{param('qat')}: the class folders of {param('data')} ({', '.join(class_names[:3])}, ...) "
                        f"differ from {param('finetune')} {recipe.finetune}'s classes "
                        f"({', '.join(source.class_names[:3])}, ...)")
    return prepare_qat(create_model(recipe.model, weights=source), recipe.img_size)


def export_qat_best(recipe: TrainRecipe, num_classes: int, best_path: Path, output: Path) -> Path:
    """Convert the best QAT checkpoint to an int8 ExecuTorch program; log its top-1 in ExecuTorch.

    Evaluated on every val image by this (main) process: the training's val loader may be sharded.
    """
    state = read_run_checkpoint(best_path, "train")["state_dict"]

    def best():
        model = prepare_qat(create_model(recipe.model, num_classes=num_classes), recipe.img_size)
        model.load_state_dict(state)
        return model

    loader = build_eval_loader(Path(recipe.data) / "val", recipe.img_size, recipe.crop_pct, recipe.batch_size,
                               recipe.workers)
    path = output / "model-best-int8.pte"
    example = torch.zeros(1, 3, recipe.img_size, recipe.img_size)
    with torch.no_grad():
        export_executorch(convert_qat(best()), example, path)
        stats = evaluate_artifact(load_executorch(path), batch_samples(loader), best().eval())
    (output / "int8.json").write_text(json.dumps({"path": str(path), **stats}, indent=2))
    log.info("int8 ExecuTorch program %s: val top-1 %.2f (%d images), %.2f%% agreement with the fake-quantized "
             "model", path, stats["top1"], stats["images"], stats["agreement"])
    return path
