"""Reading, converting and loading checkpoints in every supported layout; clear errors otherwise.

Nothing here touches the network: checkpoints are built locally, URLs are served on loopback.
"""

import argparse
import datetime
import functools
import hashlib
import http.server
import threading
import urllib.error

import pytest
import torch

import repvit
from repvit.weights import CheckpointError, cache_dir, get_weight_entry, read_checkpoint
import timm

from conftest import scale_of, settle_batchnorm
from reference_official import M0_6_CFGS, M0_9_CFGS, OfficialRepViT

pytestmark = pytest.mark.weights

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _close(a, b):
    return (a - b).abs().max() <= 1e-4 * scale_of(b)


def _official(cfgs=M0_9_CFGS, legacy=False, num_classes=1000):
    torch.manual_seed(0)
    return settle_batchnorm(OfficialRepViT(cfgs, num_classes=num_classes, distillation=True, legacy=legacy))


@pytest.fixture(scope="module")
def m09_file(tmp_path_factory):
    """A repvit-format training checkpoint of M0.9 with a distillation head, and its model."""
    torch.manual_seed(0)
    model = settle_batchnorm(repvit.create_model("repvit_m0_9", distillation=True))
    path = repvit.save_weights(model, tmp_path_factory.mktemp("w") / "m09.safetensors")
    return path, model


# ------------------------------------------------------------------------------ official format

@pytest.mark.parametrize("name, cfgs", [("repvit_m0_9", M0_9_CFGS), ("repvit_m0_6", M0_6_CFGS)])
def test_official_release_checkpoint(name, cfgs, tmp_path):
    reference = _official(cfgs)
    path = tmp_path / "official.pth"
    # release/training checkpoints also pickle the argparse namespace of the run
    torch.save({"model": reference.state_dict(), "epoch": 299, "args": argparse.Namespace(model=name)}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "official" and ckpt.distillation and ckpt.num_classes == 1000
    assert ckpt.describe().startswith(name)
    model = repvit.create_model(name, weights=path)
    with torch.no_grad():
        expected = reference(X)
        assert _close(model(X), expected)
        assert _close(repvit.reparameterize(model)(X), expected)


def test_official_fused_checkpoint(tmp_path):
    reference = _official()
    path = tmp_path / "fused.pth"
    torch.save({"model": reference.fused().state_dict()}, path)
    model = repvit.create_model("repvit_m0_9", weights=path)
    assert model.deployed
    with torch.no_grad():
        assert _close(model(X), reference(X))


def test_official_legacy_checkpoint_loads_into_v1_and_v2_models(tmp_path):
    reference = _official(legacy=True)
    path = tmp_path / "v1.pth"
    torch.save({"model": reference.state_dict()}, path)
    assert read_checkpoint(path).legacy
    assert read_checkpoint(path).describe().startswith("repvit_m1 ")
    with torch.no_grad():
        expected = reference(X)
        v1 = repvit.create_model("repvit_m1", weights=path)
        assert v1.spec.legacy and _close(v1(X), expected)
        # the same weights in the current token-mixer form (exact conversion, eval mode)
        v2 = repvit.create_model("repvit_m0_9", weights=path)
        assert not v2.spec.legacy and _close(v2(X), expected)


# ------------------------------------------------------------------------------ our own format

def test_safetensors_round_trip_with_metadata(m09_file, tmp_path):
    path, model = m09_file
    ckpt = read_checkpoint(path)
    assert ckpt.format == "repvit" and ckpt.metadata["model"] == "repvit_m0_9"
    loaded = repvit.create_model("repvit_m0_9", weights=path)
    with torch.no_grad():
        assert torch.equal(loaded(X), model.eval()(X))
    named = repvit.save_weights(repvit.create_model("repvit_m0_6", num_classes=3), tmp_path / "n.pth",
                                class_names=["cat", "dog", "owl"])
    assert read_checkpoint(named).class_names == ["cat", "dog", "owl"]
    assert not list(tmp_path.glob("*.tmp"))  # written via a temporary file, then renamed


def test_reparameterized_checkpoint_round_trip(m09_file, tmp_path):
    _, model = m09_file
    deployed = repvit.reparameterize(model)
    path = repvit.save_weights(deployed, tmp_path / "deployed.safetensors")
    loaded = repvit.create_model("repvit_m0_9", weights=path)
    assert loaded.deployed
    with torch.no_grad():
        assert torch.equal(loaded(X), deployed(X))
    with pytest.raises(CheckpointError, match=r"reparameterized \(deployed\) and loads only into a deployed model"):
        repvit.create_model("repvit_m0_9", weights=path, deploy=False)


def test_training_checkpoint_into_deployed_model(m09_file):
    path, model = m09_file
    deployed = repvit.create_model("repvit_m0_9", weights=path, deploy=True)
    assert deployed.deployed
    with torch.no_grad():
        assert _close(deployed(X), model.eval()(X))


def test_wrapped_state_dicts(m09_file, tmp_path):
    _, model = m09_file
    ddp = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, ddp)
    with torch.no_grad():
        assert torch.equal(repvit.create_model("repvit_m0_9", weights=ddp)(X), model.eval()(X))


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (0, 1)])
def test_features_only_loads_a_classification_checkpoint(m09_file, out_indices):
    path, model = m09_file
    backbone = repvit.create_model("repvit_m0_9", features_only=True, out_indices=out_indices, weights=path)
    with torch.no_grad():
        _, expected = model.eval().forward_intermediates(X, indices=out_indices)
        for a, b in zip(backbone(X), expected):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------ mismatches

def test_wrong_variant_names_lookalike_and_first_tensor(m09_file):
    path, _ = m09_file
    with pytest.raises(CheckpointError) as err:
        repvit.create_model("repvit_m1_1", weights=path)
    msg = str(err.value)
    assert "does not fit repvit_m1_1" in msg
    assert "'stem.conv1.conv.weight' has shape (24, 3, 3, 3) in the checkpoint, the model expects (32, 3, 3, 3)" in msg
    assert "looks like repvit_m0_9 (num_classes=1000, distillation)" in msg
    assert "\n" not in msg


def test_wrong_class_count(m09_file):
    path, _ = m09_file
    with pytest.raises(CheckpointError, match=r"head\.head\.linear\.weight.*\(1000, 384\).*\(10, 384\).*1000 classes"):
        repvit.create_model("repvit_m0_9", weights=path, num_classes=10)


def test_distillation_mismatch(m09_file):
    path, _ = m09_file
    with pytest.raises(CheckpointError, match=r"head\.head_dist.*distillation=True"):
        repvit.create_model("repvit_m0_9", weights=path, distillation=False)
    plain = repvit.create_model("repvit_m0_9", distillation=False)
    with pytest.raises(CheckpointError, match="head_dist"):
        repvit.load_weights(plain, path)


def test_checkpoint_without_classifier(tmp_path):
    torch.manual_seed(0)
    backbone = settle_batchnorm(timm.create_model("repvit_m0_9", num_classes=0, pretrained=False))
    path = tmp_path / "headless.pth"
    torch.save(backbone.state_dict(), path)
    model = repvit.create_model("repvit_m0_9", weights=path)  # num_classes follows the checkpoint: 0
    assert model.num_classes == 0
    with torch.no_grad():
        assert _close(model(X), backbone(X))
    with pytest.raises(CheckpointError, match="no classifier: use num_classes=0 or features_only=True"):
        repvit.create_model("repvit_m0_9", weights=path, num_classes=1000)


def test_missing_batch_counters_and_ema_only_files(m09_file, tmp_path):
    _, model = m09_file
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for layout, name in (({"model": state}, "no_counters.pth"), ({"model_ema": state}, "ema_only.pth")):
        torch.save(layout, tmp_path / name)
        with torch.no_grad():
            assert torch.equal(repvit.create_model("repvit_m0_9", weights=tmp_path / name)(X), model.eval()(X))


def test_incomplete_or_foreign_dicts_are_not_taken_for_deployed(m09_file, tmp_path):
    _, model = m09_file
    params_only = tmp_path / "params.pth"
    torch.save(dict(model.named_parameters()), params_only)  # BatchNorm statistics missing
    assert read_checkpoint(params_only).deployed is False
    with pytest.raises(CheckpointError, match=r"'stem\.conv1\.bn\.running_mean' \(24,\) is missing"):
        repvit.create_model("repvit_m0_9", weights=params_only)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, foreign)
    assert read_checkpoint(foreign).deployed is None
    with pytest.raises(CheckpointError, match="looks like no registered RepViT variant.*not a RepViT layout"):
        repvit.create_model("repvit_m0_9", weights=foreign)
    odd = tmp_path / "odd_official.pth"
    torch.save({"features.x.weight": torch.zeros(1)}, odd)
    with pytest.raises(CheckpointError, match="unrecognised key 'features.x.weight'"):
        read_checkpoint(odd)


def test_legacy_checkpoint_of_a_v2_variant_is_recognised(tmp_path):
    # paper-facts 8.1: some v2 runs were trained with the legacy token mixer
    cfgs = [[3, 2, 56 * (c // 48), se, hs, st] for _, _, c, se, hs, st in M0_9_CFGS]  # M1.0 widths
    reference = _official(cfgs, legacy=True)
    path = tmp_path / "m1_0_legacy.pth"
    torch.save({"model": reference.state_dict()}, path)
    assert read_checkpoint(path).describe().startswith("repvit_m1_0 ")
    with pytest.raises(CheckpointError, match="looks like repvit_m1_0 "):
        repvit.create_model("repvit_m0_9", weights=path)
    with torch.no_grad():
        assert _close(repvit.create_model("repvit_m1_0", weights=path)(X), reference(X))


def test_truncated_and_garbage_files(m09_file, tmp_path):
    path, model = m09_file
    pth = tmp_path / "full.pth"
    torch.save({"model": model.state_dict()}, pth)
    for source, name in ((pth, "cut.pth"), (path, "cut.safetensors")):
        data = source.read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=r"cut\.(pth|safetensors): not a readable checkpoint \(truncated or corrupt"):
            repvit.create_model("repvit_m0_9", weights=cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(junk)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "when": datetime.datetime(2024, 1, 1)}, path)
    with pytest.raises(CheckpointError, match="Python objects other than tensors"):
        read_checkpoint(path)


def test_missing_sources(tmp_path):
    with pytest.raises(CheckpointError, match="no such file.*https:// URL or a registered weight name"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"unknown weights 'repvit_m0_9.dist_999e'.*repvit_m0_9.dist_300e"):
        read_checkpoint("repvit_m0_9.dist_999e")


def test_load_weights_rejects_foreign_models(m09_file):
    with pytest.raises(TypeError, match="RepViT model"):
        repvit.load_weights(torch.nn.Linear(2, 2), m09_file[0])


# ------------------------------------------------------------------------------ URLs and the registry

class _Server:
    """A static file server on loopback that counts requests."""

    def __init__(self, root):
        self.hits = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_url_download_is_cached_and_checked(m09_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, model = m09_file
    served = tmp_path / "srv"
    served.mkdir()
    (served / "m09.safetensors").write_bytes(path.read_bytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    other = repvit.create_model("repvit_m0_9", distillation=True)  # same file name, other weights
    (served / "v2").mkdir()
    repvit.save_weights(other, served / "v2" / "m09.safetensors")
    server = _Server(served)
    try:
        url = server.url + "m09.safetensors"
        first = repvit.create_model("repvit_m0_9", weights=url, sha256=digest)
        second = repvit.create_model("repvit_m0_9", weights=url)
        assert server.hits == 1  # downloaded once, then read from the torch hub cache
        cached = list(cache_dir().glob("*-m09.safetensors"))
        assert len(cached) == 1 and str(cached[0]).startswith(str(tmp_path / "torch"))
        with torch.no_grad():
            assert torch.equal(first(X), second(X))
            # another URL with the same file name is another cache entry, not a stale hit
            third = repvit.create_model("repvit_m0_9", weights=server.url + "v2/m09.safetensors")
            assert torch.equal(third(X), other.eval()(X))
        with pytest.raises(CheckpointError, match="sha256 of the downloaded file is .* expected 0000"):
            read_checkpoint(url, sha256="0000")
        assert not cached[0].exists()  # a bad file does not stay cached
        with pytest.raises(CheckpointError, match="could not download .*missing.pth.*offline"):
            read_checkpoint(server.url + "missing.pth")
    finally:
        server.close()


def test_registered_name_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    entry = get_weight_entry("repvit_m1_1.dist_450e")
    assert entry.url.startswith("https://github.com/THU-MIG/RepViT/releases/download/")
    with pytest.raises(CheckpointError) as err:
        repvit.create_model("repvit_m1_1", weights="repvit_m1_1.dist_450e")
    msg = str(err.value)
    assert entry.url in msg and "offline" in msg and str(cache_dir() / "repvit_m1_1_distill_450e.pth") in msg


def test_registered_name_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("network used"))
    reference = _official()
    cache_dir().mkdir(parents=True)
    torch.save({"model": reference.state_dict()}, cache_dir() / "repvit_m0_9_distill_300e.pth")
    model = repvit.create_model("repvit_m0_9", weights="repvit_m0_9.dist_300e")
    with torch.no_grad():
        assert _close(model(X), reference(X))


def test_registry_covers_every_release():
    names = repvit.list_weights()
    assert len(names) == 14
    for arch in repvit.list_models():
        assert repvit.default_weights(arch) in names
    assert repvit.default_weights("repvit_m2_3") == "repvit_m2_3.dist_450e"
    assert get_weight_entry("repvit_m3.dist_300e").url.endswith("jameslahm/RepViT/releases/download/v1.0/repvit_m3_distill_300.pth")
