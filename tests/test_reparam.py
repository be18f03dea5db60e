import pytest
import torch
from torch import nn

import repvit
from repvit.layers import ConvNorm, Fusable, RepDepthwiseConv
from conftest import scale_of, settle_batchnorm

pytestmark = pytest.mark.reparam


def _assert_deployed(model: nn.Module):
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(isinstance(m, Fusable) for m in model.modules())
    assert model.deployed and not model.training


@pytest.mark.parametrize("name", repvit.list_models())
def test_reparameterize_every_variant(name):
    torch.manual_seed(0)
    model = settle_batchnorm(repvit.create_model(name, num_classes=10, distillation=True))
    model.train()  # reparameterize must not depend on, or change, the caller's mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    deployed = repvit.reparameterize(model)
    _assert_deployed(deployed)
    # the training model is untouched: same tensors, same mode, still multi-branch
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, RepDepthwiseConv) for m in model.modules())

    with torch.no_grad():
        ref = model.eval()(x)
        out = deployed(x)
    assert (out - ref).abs().max() <= 1e-4 * scale_of(ref), float((out - ref).abs().max())
    assert ref.abs().max() > 0.1  # the check is on logits of real magnitude, not ~0

    # idempotent: fusing a deployed model returns an equal copy, not the same object
    again = repvit.reparameterize(deployed)
    assert again is not deployed
    assert deployed.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in deployed.state_dict().items())


@pytest.mark.parametrize("name", ["repvit_m0_9", "repvit_m2"])
def test_reparameterize_is_exact_in_float64(name):
    torch.manual_seed(0)
    model = settle_batchnorm(repvit.create_model(name, distillation=True)).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    deployed = repvit.reparameterize(model)
    assert all(p.dtype == torch.float64 for p in deployed.parameters())
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), rtol=0, atol=1e-10)


def test_reparameterize_features_only():
    torch.manual_seed(0)
    model = settle_batchnorm(repvit.create_model("repvit_m1_1", features_only=True))
    deployed = repvit.reparameterize(model)
    _assert_deployed(deployed)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model(x), deployed(x)):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-4 * scale_of(a)
    assert deployed.feature_info == model.feature_info


def test_create_model_deploy_builds_the_fused_structure():
    model = repvit.create_model("repvit_m0_6", deploy=True)
    _assert_deployed(model)
    assert isinstance(model.head, nn.Linear)


@pytest.mark.parametrize("kernel_size, legacy", [(3, False), (5, False), (5, True), (7, True)])
def test_token_mixer_fuses_any_odd_kernel(kernel_size, legacy):
    torch.manual_seed(0)
    mixer = settle_batchnorm(nn.Sequential(ConvNorm(3, 8, 1), RepDepthwiseConv(8, kernel_size, legacy)))
    fused = repvit.reparameterize(mixer)
    assert isinstance(fused[1], nn.Conv2d) and fused[1].kernel_size == (kernel_size, kernel_size)
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        assert torch.allclose(fused(x), mixer(x), atol=1e-5)


def test_reparameterize_a_bare_fusable_module():
    conv = settle_batchnorm(nn.Sequential(ConvNorm(3, 4, 3)))[0]
    fused = repvit.reparameterize(conv)
    assert isinstance(fused, nn.Conv2d)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fused(x), conv(x), atol=1e-6)


def test_even_kernel_is_rejected():
    with pytest.raises(ValueError, match="odd"):
        RepDepthwiseConv(8, 4)
