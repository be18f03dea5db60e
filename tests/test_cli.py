import json
import subprocess
import sys
import urllib.error

import pytest
import torch
from PIL import Image

import repvit
import repvit.export
from repvit.cli import main

pytestmark = pytest.mark.cli


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == repvit.list_models()
    m09 = next(r for r in rows if r["model"] == "repvit_m0_9")
    assert m09["params_deployed"] == 5_067_056 and m09["params_train"] == 5_489_328
    assert round(m09["macs"] / 1e9, 1) == 0.8
    assert m09["published"]["top1"]["dist_450e"] == 79.1 and m09["published"]["latency_ms"] == 0.9
    assert m09["weights"] == ["repvit_m0_9.dist_300e", "repvit_m0_9.dist_450e"]
    assert m09["default_weights"] == "repvit_m0_9.dist_450e"


def test_models_table(capsys):
    assert main(["models", "--filter", "repvit_m1_*"]) == 0
    out = capsys.readouterr().out
    assert "repvit_m1_1" in out and "repvit_m0_9" not in out and "80.7 / 81.2" in out and "published" in out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    for i, color in enumerate([(200, 30, 30), (20, 200, 60)]):
        Image.new("RGB", (300, 240), color).save(root / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"not really a jpeg")
    return root


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = repvit.create_model("repvit_m0_6", distillation=True)
    return repvit.save_weights(model, tmp_path_factory.mktemp("w") / "m06.safetensors")


def test_predict_with_imagenet_names(images, imagenet_weights, capsys):
    rc = main(["predict", str(images / "img0.png"), str(images / "img1.png"), "--model", "repvit_m0_6",
               "--weights", str(imagenet_weights), "--topk", "3", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(r["top"]) for r in out] == [3, 3]
    probs = [t["prob"] for t in out[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    from repvit.data import imagenet_class_names

    names = imagenet_class_names()
    assert all(t["name"] == names[t["index"]] for r in out for t in r["top"])


def test_predict_uses_the_checkpoint_class_names(images, tmp_path, capsys):
    model = repvit.create_model("repvit_m0_6", num_classes=2)
    path = repvit.save_weights(model, tmp_path / "two.safetensors", class_names=["red", "green"])
    assert main(["predict", str(images / "img0.png"), "--model", "repvit_m0_6", "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert "red" in out and "green" in out


def test_predict_unreadable_image(images, imagenet_weights, capsys):
    rc = main(["predict", str(images / "broken.jpg"), "--model", "repvit_m0_6", "--weights", str(imagenet_weights)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "broken.jpg: not a readable image" in err
    assert main(["predict", str(images / "nope.png"), "--weights", str(imagenet_weights)]) == 2
    assert "nope.png: no such image file" in capsys.readouterr().err


def test_predict_offline_without_weights(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["predict", str(images / "img0.png"), "--model", "repvit_m0_9"]) == 2
    err = capsys.readouterr().err
    assert "repvit_m0_9_distill_450e.pth" in err and "offline" in err and "pass its local path" in err


def test_class_names_must_match_the_classes(tmp_path):
    with pytest.raises(ValueError, match="2 names, the model has 3 classes"):
        repvit.save_weights(repvit.create_model("repvit_m0_6", num_classes=3), tmp_path / "x.safetensors",
                            class_names=["a", "b"])


def test_predict_bad_device(images, imagenet_weights, monkeypatch, capsys):
    args = ["predict", str(images / "img0.png"), "--weights", str(imagenet_weights), "--model", "repvit_m0_6"]
    assert main(args + ["--device", "foo"]) == 2
    assert "expected cpu, cuda or cuda:N" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the answer on a CPU-only machine
    assert main(args + ["--device", "cuda"]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_bad_arguments(capsys):
    assert main(["predict", "x.png", "--model", "repvit_m9"]) == 2
    assert "unknown model 'repvit_m9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["modles"])


def test_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "repvit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"repvit {repvit.__version__} (repvit-toolkit)"


def test_errors_name_options_as_typed(tmp_path, monkeypatch, capsys):
    # the library names its parameters (data, img_size); the command line shows them as options,
    # and leaves a value that happens to be spelled like one alone
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "data", "--distillation", "none"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: --data data: no such directory")
    assert main(["export", "repvit_m0_6", "--format", "onnx", "--img-size", "16"]) == 2
    assert "--img-size must be >= 32 and --batch >= 1, got 16 and 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^img_size must be >= 32 and batch >= 1, got 16 and 1$"):
        repvit.export.export("repvit_m0_6", "onnx", img_size=16)
