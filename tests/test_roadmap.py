"""The roadmap: every step is a real network; the ends are MobileNetV3-L and RepViT-M0.9 exactly."""

import json

import pytest
import timm
import torch
from conftest import scale_of, settle_batchnorm
from torch import nn

import repvit
from repvit.cli import main
from repvit.models import get_variant
from repvit.models.roadmap import FINAL_VARIANT, STEPS, get_step
from repvit.tools import count_macs, count_params

pytestmark = pytest.mark.roadmap


def test_the_steps_in_order():
    assert [s.id for s in STEPS] == ["mobilenetv3", "recipe", "separate_mixers", "ratio2", "wider", "conv_stem",
                                     "downsampling", "classifier", "stage_ratio", "kernel3", "cross_se"]
    assert [s.paper_latency_ms for s in STEPS] == [1.01, 1.01, 0.81, 0.65, 0.89, 0.86, 0.96, 0.77, 0.91, 0.89, 0.87]
    assert [s.paper_top1 for s in STEPS] == [75.2, 71.5, 68.3, None, 73.5, 73.9, 75.4, 74.8, 76.9, 76.9, 77.4]
    for previous, step in zip(STEPS, STEPS[1:]):
        assert step.spec != previous.spec, f"{step.id} changes nothing"
    assert repvit.list_models(roadmap=True) == sorted(s.model for s in STEPS)
    assert "roadmap_wider" not in repvit.list_models()  # the variant table stays the variants
    assert get_step("wider") is get_step(4) is get_step("roadmap_wider")
    with pytest.raises(ValueError, match="unknown roadmap step 'widest'"):
        get_step("widest")


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.id)
def test_every_step_trains_and_reparameterizes(step):
    torch.manual_seed(0)
    model = repvit.create_model(step.model, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    settle_batchnorm(model)
    deployed = repvit.reparameterize(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    with torch.no_grad():
        ref = model(x)
        assert (deployed(x) - ref).abs().max() <= 1e-4 * scale_of(ref)


def test_step0_is_mobilenetv3_large():
    ours = repvit.create_model("roadmap_mobilenetv3")
    theirs = timm.create_model("mobilenetv3_large_100")
    assert abs(count_params(ours) / count_params(theirs) - 1) < 0.01
    assert count_params(ours) == count_params(theirs) == 5_483_032  # in fact exactly
    assert count_macs(ours) == pytest.approx(count_macs(theirs), rel=0.01)


def test_last_step_is_repvit_m0_9():
    assert STEPS[-1].spec == get_variant(FINAL_VARIANT).net
    torch.manual_seed(0)
    m09 = settle_batchnorm(repvit.create_model(FINAL_VARIANT))
    final = repvit.create_model(STEPS[-1].model)
    assert count_params(final) == count_params(m09)
    final.load_state_dict(m09.state_dict(), strict=True)  # the same modules under the same names
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(final.eval()(x), m09(x))


def test_roadmap_command(tmp_path, capsys):
    out = tmp_path / "rm.json"
    rc = main(["roadmap", "--runtime", "eager", "--steps", "ratio2,wider,conv_stem", "--img-size", "64",
               "--warmup", "0", "--rounds", "1", "--iters", "2", "--quiet", "--json", str(out), "--markdown",
               str(tmp_path / "rm.md"), "--plot", str(tmp_path / "rm.png"), "--train", "--epochs", "1",
               "--output", str(tmp_path / "runs")])
    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["id"] for r in rows] == ["ratio2", "wider", "conv_stem"]
    assert all(r["status"] == "ok" and r["latency_ms"] > 0 and 0 <= r["top1"] <= 100 for r in rows)
    assert rows[1]["paper_direction"] == "up" and rows[1]["measured_direction"] in ("up", "down", "flat")
    assert rows[1]["params_m"] > rows[0]["params_m"]  # wider
    assert "| 4 | Wider |" in (tmp_path / "rm.md").read_text()
    assert (tmp_path / "rm.png").read_bytes()[:4] == b"\x89PNG"
    assert "Roadmap MobileNetV3-L" in capsys.readouterr().out
