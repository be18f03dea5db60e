"""Parity with timm's independent RepViT implementation, via timm's own state dicts."""

import pytest
import timm
import torch
from timm.utils.model import reparameterize_model

import repvit
from conftest import TIMM_VARIANTS, scale_of, settle_batchnorm

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("name", TIMM_VARIANTS)
def test_timm_state_dict_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    reference = settle_batchnorm(timm.create_model(name, pretrained=False, distillation=True))
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))

    ours = repvit.create_model(name, weights=path)
    assert ours.distillation and not ours.deployed and not ours.training
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        expected = reference(x)
        trained = ours(x)
        deployed = repvit.reparameterize(ours)(x)
    tol = 1e-4 * scale_of(expected)
    assert expected.abs().max() > 0.1
    assert (trained - expected).abs().max() <= tol
    assert (deployed - expected).abs().max() <= tol


@pytest.mark.parametrize("name", ["repvit_m0_9", "repvit_m3"])
def test_timm_fused_checkpoint_loads_into_our_deployed_model(name, tmp_path):
    torch.manual_seed(0)
    reference = settle_batchnorm(timm.create_model(name, pretrained=False, distillation=True))
    fused = reparameterize_model(reference)  # timm's own fusion
    path = tmp_path / "fused.pth"
    torch.save({"state_dict": fused.state_dict()}, path)  # timm's training-script layout
    ours = repvit.create_model(name, weights=path)
    assert ours.deployed
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert (ours(x) - expected).abs().max() <= 1e-4 * scale_of(expected)


def test_timm_features_match_ours(tmp_path):
    torch.manual_seed(0)
    reference = settle_batchnorm(timm.create_model("repvit_m1_1", features_only=True, pretrained=False))
    path = tmp_path / "feats.pth"
    torch.save(reference.state_dict(), path)
    ours = repvit.create_model("repvit_m1_1", features_only=True, weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(reference(x), ours(x)):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-4 * scale_of(a)
    assert [i["num_chs"] for i in reference.feature_info.get_dicts()] == ours.feature_info.channels()
