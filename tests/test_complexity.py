"""Parameter and MAC counts against the published tables (fused model, 224x224, merged head)."""

import pytest
import torch

import repvit
from repvit.tools import count_macs, count_params, model_stats, published

# Exact fused counts re-derived from the official configs (shared/paper-facts.md, section 2b, [calc]).
EXACT = {  # name: (params, GMACs to 3 decimals)
    "repvit_m0_6": (2_468_072, 0.385),
    "repvit_m0_9": (5_067_056, 0.816),
    "repvit_m1_0": (6_810_312, 1.106),
    "repvit_m1_1": (8_244_312, 1.337),
    "repvit_m1_5": (14_049_992, 2.274),
    "repvit_m2_3": (22_926_792, 4.516),
    "repvit_m1": (5_067_056, 0.816),
    "repvit_m2": (8_244_312, 1.337),
    "repvit_m3": (10_115_720, 1.859),
}
# Training structure with two heads, as logged by the official runs (current-code counts;
# the v1 M1/M3 logs differ from their own code by 21 x C1, see paper-facts section 8.5).
TRAIN_PARAMS = {
    "repvit_m0_9": 5_489_328, "repvit_m1_0": 7_302_796, "repvit_m1_1": 8_802_912,
    "repvit_m1_5": 14_644_432, "repvit_m2_3": 23_688_792, "repvit_m2": 8_797_984,
}


@pytest.mark.parametrize("name", repvit.list_models())
def test_counts_match_the_paper(name):
    stats = model_stats(name)
    params, gmacs = EXACT[name]
    assert stats["params_deployed"] == params
    assert round(stats["macs"] / 1e9, 3) == gmacs
    paper = published(name)
    if "params_m" in paper:  # the paper's own table, printed to 0.1
        assert round(stats["params_deployed"] / 1e6, 1) == paper["params_m"]
        assert round(stats["macs"] / 1e9, 1) == paper["gmacs"]
    if name in TRAIN_PARAMS:
        assert stats["params_train"] == TRAIN_PARAMS[name]


def test_counting_does_not_touch_the_model():
    model = repvit.create_model("repvit_m0_6")
    before = model.stem.conv1.conv.weight.clone()
    macs = count_macs(model, img_size=448)
    assert model.stem.conv1.conv.weight.device.type == "cpu"
    assert torch.equal(before, model.stem.conv1.conv.weight)
    # MACs of a fully convolutional net scale with the pixel count (the head is tiny)
    assert abs(macs / (4 * count_macs(model, img_size=224)) - 1) < 0.01
    assert count_params(model) > count_params(repvit.reparameterize(model))
