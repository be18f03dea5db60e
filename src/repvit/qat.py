"""Quantization-aware fine-tuning (QAT) of the deployed model, for when post-training int8 loses too much.

The network is reparameterized first (QAT learns the weights that will really be quantized: the
fused 3x3 depthwise kernels, not the branches), captured with ``torch.export`` and prepared with
the XNNPACK quantizer in QAT mode (fake-quantized per-channel int8 weights and int8 activations).
``repvit train --qat --finetune CKPT`` trains that graph for a few epochs with the usual engine and
finally converts the best checkpoint to a real int8 ExecuTorch program (``model-best-int8.pte``).

Observers learn activation ranges while training and are frozen while evaluating, so evaluation
measures the simulated int8 model without changing it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QATModel", "prepare_qat", "convert_qat"]


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

    from .quantize import xnnpack_quantizer
    from .reparam import reparameterize

    quantizer = xnnpack_quantizer(qat=True)
    deployed = reparameterize(model).float()
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in deployed.modules()):
        raise ValueError("--qat needs --drop-rate 0: dropout cannot be switched off inside an exported graph")
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    graph = torch.export.export(deployed, (example,), dynamic_shapes=({0: batch},)).module()
    return QATModel(prepare_qat_pt2e(graph, quantizer), deployed.num_classes)


def convert_qat(model: QATModel) -> nn.Module:
    """The int8 graph (quantize/dequantize around int8 kernels) ready for ExecuTorch's XNNPACK lowering."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model.eval()
    return convert_pt2e(model.graph)
