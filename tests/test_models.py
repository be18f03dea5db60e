import functools

import pytest
import torch
from torch import nn

import repvit
from repvit.layers import ClassifierHead, SqueezeExcite
from repvit.models import RepViTSpec, Variant, register_variant

ALL = repvit.list_models()


def test_registry_lists_every_variant():
    assert ALL == sorted(["repvit_m0_6", "repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5",
                          "repvit_m2_3", "repvit_m1", "repvit_m2", "repvit_m3"])
    assert repvit.list_models("repvit_m1_*") == ["repvit_m1_0", "repvit_m1_1", "repvit_m1_5"]


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_variant(Variant("repvit_m0_9", RepViTSpec((8,), (1,)), "dup", "v2"))


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_variant(name, image_batch):
    torch.manual_seed(0)
    model = repvit.create_model(name, num_classes=7, distillation=True)
    out = model(image_batch)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_se_placement_follows_the_paper():
    # M0.9 (2,2,14,2): SE on blocks 1, 3, 5, ... of each stage; never in downsampling layers.
    model = repvit.create_model("repvit_m0_9")
    flags = [[isinstance(b.se, SqueezeExcite) for b in stage.blocks] for stage in model.stages]
    assert flags == [[True, False], [True, False], [True, False] * 7, [True, False]]
    assert not any(isinstance(s.downsample.pre_block.se, SqueezeExcite) for s in model.stages[1:])
    assert sum(isinstance(m, SqueezeExcite) for m in model.modules()) == 10


def test_distilled_training_returns_both_heads(image_batch):
    model = repvit.create_model("repvit_m0_6", num_classes=5, distillation=True)
    model.set_distilled_training(True)
    cls, dist = model(image_batch)
    assert cls.shape == dist.shape == (2, 5) and not torch.equal(cls, dist)
    model.eval()
    pooled = model.forward_head(model.forward_features(image_batch), pre_logits=True)
    assert torch.allclose(model(image_batch), (model.head.head(pooled) + model.head.head_dist(pooled)) / 2)
    with pytest.raises(ValueError, match="without a distillation head"):
        repvit.create_model("repvit_m0_6").set_distilled_training(True)


def test_reset_classifier(image_batch):
    model = repvit.create_model("repvit_m0_6", distillation=True).double()
    model.reset_classifier(3)
    assert model.head.distillation and model.head.head.linear.weight.dtype == torch.float64
    assert model.eval()(image_batch.double()).shape == (2, 3)
    model.reset_classifier(0, distillation=False)
    assert model(image_batch.double()).shape == (2, 320)


@pytest.mark.parametrize("name", ["repvit_m0_9", "repvit_m3"])
def test_feature_info_matches_real_features(name):
    model = repvit.create_model(name, features_only=True)
    feats = model(torch.randn(1, 3, 96, 128))
    assert len(feats) == 4 == len(model.feature_info)
    for f, info in zip(feats, model.feature_info):
        assert f.shape[1] == info["num_chs"]
        assert (96 // f.shape[2], 128 // f.shape[3]) == (info["reduction"], info["reduction"])
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    classifier = repvit.create_model(name)
    assert classifier.feature_info.channels() == model.feature_info.channels()
    assert [dict(i) for i in classifier.feature_info] == [dict(i) for i in model.feature_info]


def test_features_only_subset_and_intermediates_agree():
    torch.manual_seed(0)
    full = repvit.create_model("repvit_m0_6").eval()
    sub = repvit.create_model("repvit_m0_6", features_only=True, out_indices=(1, 2)).eval()
    sub.load_state_dict({k: v for k, v in full.state_dict().items() if k in sub.state_dict()})
    assert len(sub.stages) == 3  # the last stage is not built when it is not needed
    x = torch.randn(1, 3, 64, 64)
    final, inter = full.forward_intermediates(x, indices=(1, 2))
    assert torch.allclose(final, full.forward_features(x))
    for a, b in zip(sub(x), inter):
        assert torch.equal(a, b)
    assert sub.feature_info.channels() == [80, 160]


@pytest.mark.parametrize("indices", [(4,), (), (-1,), (1, 1), "ab"])
def test_bad_out_indices(indices):
    with pytest.raises(ValueError, match="out_indices"):
        repvit.create_model("repvit_m0_9", features_only=True, out_indices=indices)


@pytest.mark.parametrize("features_only", [False, True])
def test_bad_input_is_a_clear_value_error(features_only):
    model = repvit.create_model("repvit_m0_6", features_only=features_only)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(2, 1, 64, 64\)"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32x32.*got 16x64"):
        model(torch.randn(2, 3, 16, 64))
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(3, 64, 64))
    deployed = repvit.reparameterize(model)
    with pytest.raises(ValueError, match="at least 32x32"):
        deployed(torch.randn(1, 3, 31, 31))


def test_inapplicable_arguments_are_errors():
    with pytest.raises(ValueError, match="do not apply to features_only"):
        repvit.create_model("repvit_m0_9", features_only=True, num_classes=10)
    with pytest.raises(ValueError, match="only with features_only"):
        repvit.create_model("repvit_m0_9", out_indices=(1, 2))


def test_reset_classifier_keeps_a_deployed_model_deployed(image_batch):
    deployed = repvit.create_model("repvit_m0_6", deploy=True)
    deployed.reset_classifier(4)
    assert deployed.deployed and deployed(image_batch).shape == (2, 4)


def test_in_chans():
    model = repvit.create_model("repvit_m0_6", in_chans=1, num_classes=2)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'repvit_m0_8'\. Did you mean 'repvit_m0_9'\?.*repvit_m2_3"):
        repvit.create_model("repvit_m0_8")
    with pytest.raises(ValueError, match=r"names a weight set.*weights='repvit_m0_9.dist_450e'"):
        repvit.create_model("repvit_m0_9.dist_450e")


def test_unknown_keyword_is_an_error():
    with pytest.raises(TypeError):
        repvit.create_model("repvit_m0_9", num_clases=10)


@functools.lru_cache(maxsize=1)  # the fx and TorchScript cases of one variant run back to back
def _structures(name: str) -> tuple[nn.ModuleList, nn.ModuleList]:
    """A variant as users deploy it, in eval mode: ``[classifier, features_only backbone]`` in
    training structure, then reparameterized. The backbone shares the classifier's stem and stages
    (as if loaded from its checkpoint); one reparameterize() keeps them shared."""
    torch.manual_seed(0)
    classifier = repvit.create_model(name, num_classes=7, distillation=True).eval()
    features = repvit.create_model(name, features_only=True).eval()
    features.stem, features.stages = classifier.stem, classifier.stages
    training = nn.ModuleList([classifier, features])
    return training, repvit.reparameterize(training)


def _fx(classifier: nn.Module, features: nn.Module) -> list[nn.Module]:
    graphs = [torch.fx.symbolic_trace(m) for m in (classifier, features)]
    assert not any("check_input" in str(node.target) for g in graphs for node in g.graph.nodes)
    return graphs


def _torchscript(classifier: nn.Module, features: nn.Module) -> list[nn.Module]:
    scripted = torch.jit.script(classifier)
    # Scripting costs per module instance, and torch.jit.script keeps submodules that are already
    # scripted: lend the backbone the classifier's scripted stem and stages for the time of scripting.
    features.stem, features.stages = scripted.stem, scripted.stages
    try:
        scripted = [scripted, torch.jit.script(features)]
    finally:
        features.stem, features.stages = classifier.stem, classifier.stages
    assert not any("expects" in str(s.inlined_graph) for s in scripted)  # no input check compiled in
    return scripted


@pytest.mark.parametrize("capture", [_fx, _torchscript], ids=["fx", "torchscript"])
@pytest.mark.parametrize("name", ALL)
def test_captured_graph_gives_the_eager_outputs(name, capture):
    """torch.fx (as timm tests every model) and TorchScript (LibTorch deployment): classifier and
    features, training and deployed structure; the input check stays out of the graph while eager
    models still run it. Unoptimised TorchScript execution: the same kernels, so equal outputs."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for models in _structures(name):
            for model, captured in zip(models, capture(*models)):
                torch.testing.assert_close(captured(x), model(x), rtol=0, atol=0)


def test_torchscript_saves_and_loads_for_libtorch(tmp_path, image_batch):
    """The LibTorch path: a deployed model scripted, saved and loaded back (torch::jit::load reads
    the same file), with the optimising executor LibTorch runs."""
    torch.manual_seed(0)
    model = repvit.create_model("repvit_m0_6", deploy=True)
    torch.jit.save(torch.jit.script(model), tmp_path / "repvit_m0_6.pt")
    loaded = torch.jit.load(tmp_path / "repvit_m0_6.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(image_batch), model(image_batch))


def test_scripted_distillation_head_returns_one_tensor():
    """A compiled method has one return type: scripted, the distilled head returns the averaged
    logits in eval and train mode; the ``(cls, dist)`` pair for the distillation loss is eager-only
    and a scripted head asked for it raises rather than silently averaging."""
    torch.manual_seed(0)
    head = ClassifierHead(16, 5, distillation=True)
    scripted = torch.jit.script(head)
    x = torch.randn(4, 16)
    for training in (False, True):
        torch.testing.assert_close(scripted.train(training)(x), head.train(training)(x))
    head.distilled_training = scripted.distilled_training = True
    assert isinstance(head(x), tuple)
    with pytest.raises(torch.jit.Error, match="runs only eagerly"):
        scripted(x)


def test_torchvision_feature_extractor_returns_the_stage_outputs(image_batch):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = repvit.create_model("repvit_m0_9").eval()
    extractor = create_feature_extractor(model, return_nodes={f"stages.{i}": f"stage{i}" for i in range(4)})
    found = extractor(image_batch)
    _, expected = model.forward_intermediates(image_batch)
    assert list(found) == ["stage0", "stage1", "stage2", "stage3"]
    assert all(torch.equal(found[f"stage{i}"], expected[i]) for i in range(4))
    assert [f.shape[1] for f in found.values()] == [info["num_chs"] for info in model.feature_info]
