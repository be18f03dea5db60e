"""Semantic FPN on RepViT: training on generated label maps, mIoU, resume, fusion, bad data."""

import json

import numpy as np
import pytest
import torch
from conftest import scale_of, settle_batchnorm
from PIL import Image

import repvit
from repvit.cli import main
from repvit.data import DatasetError, make_shapes_segmentation
from repvit.dense import SegmentRecipe, build_segmenter, segmentation_metrics, train_segmenter

pytestmark = pytest.mark.dense

SMALL = dict(model="repvit_m0_6", num_classes=4, crop_size=64, scale=(128, 96), ratio_range=(0.75, 1.25),
             batch_size=4, workers=0, lr=1e-3, log_interval=5)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_segmentation(tmp_path_factory.mktemp("seg"), n_train=16, n_val=6, size=96)


def _recipe(data, output, **kw):
    return SegmentRecipe.load(None, **{**SMALL, "data": str(data), "output": str(output), **kw})


def test_trains_and_reports_miou(shapes, tmp_path):
    result = train_segmenter(_recipe(shapes, tmp_path, max_iters=30, eval_interval=15))
    logged = [h for h in result["history"] if "train_loss" in h]
    assert logged[-1]["train_loss"] < logged[0]["train_loss"]
    evaluations = [h for h in result["history"] if "val_mIoU" in h]
    assert [h["iter"] for h in evaluations] == [15, 30]
    best = result["best"]
    assert {"mIoU", "mAcc", "aAcc"} <= set(best) and 0 <= best["mIoU"] <= best["aAcc"] <= 100
    assert best["mIoU"] > 25  # 4 classes; an untrained head scores ~ the background share only
    assert (tmp_path / "checkpoint-best.pth").is_file() and (tmp_path / "model-best-deployed.pth").is_file()


def test_metrics_from_a_confusion_matrix():
    # rows: ground truth, columns: prediction; class 2 never labelled, class 3 absent entirely
    confusion = torch.tensor([[8.0, 2.0, 0.0, 0.0], [1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    m = segmentation_metrics(confusion)
    assert m["aAcc"] == pytest.approx(100 * 11 / 16)
    # a class that is only predicted counts as IoU 0 (as MMSegmentation); one never seen is skipped
    assert m["mIoU"] == pytest.approx(100 * (8 / 11 + 3 / 8 + 0) / 3)
    assert m["mAcc"] == pytest.approx(100 * (8 / 10 + 3 / 6) / 2)
    assert m["per_class_IoU"][2] == 0 and m["per_class_IoU"][3] is None


def test_training_crops_keep_labels_on_their_pixels(tmp_path):
    # An image narrower than the crop, flipped: the padding must stay ignored and every real pixel
    # must keep its class, on the flipped side.
    from repvit.dense import SegmentationFolder

    root = tmp_path / "d"
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        Image.new("RGB", (40, 64), (200, 10, 10)).save(root / "images" / split / "a.png")
        label = np.full((64, 40), 3, dtype=np.uint8)
        label[:, :10] = 2  # the left quarter is another class
        Image.fromarray(label).save(root / "annotations" / split / "a.png")
    recipe = SegmentRecipe.load(None, data=str(root), num_classes=4, crop_size=64, scale=(64, 40), ratio_range=(1, 1),
                                flip=1.0, photometric=False)
    _, target, _ = SegmentationFolder(root, "training", recipe, True)[0]
    assert target.shape == (64, 64)
    row = target[10].tolist()  # reduce_zero_label: 3 -> 2, 2 -> 1; flipped: class 1 now on the right
    assert row == [2] * 30 + [1] * 10 + [255] * 24


def test_resume_is_exact(shapes, tmp_path):
    common = dict(max_iters=12, eval_interval=12, fpn_channels=32, head_channels=32)  # exactness needs no width
    straight = train_segmenter(_recipe(shapes, tmp_path / "a", **common))
    train_segmenter(_recipe(shapes, tmp_path / "b", stop_after_iters=5, **common))  # stops mid-epoch
    resumed = train_segmenter(_recipe(shapes, tmp_path / "b", resume="auto", **common))
    assert resumed["best"]["mIoU"] == straight["best"]["mIoU"]
    a = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=True)["state_dict"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_reparameterized_segmenter_gives_the_same_logits():
    torch.manual_seed(0)
    model = settle_batchnorm(build_segmenter(SegmentRecipe.load(None, model="repvit_m0_6", num_classes=5)))
    deployed = repvit.reparameterize(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
        assert ref.shape == (1, 5, 96, 128)
        assert (deployed(x) - ref).abs().max() <= 1e-4 * scale_of(ref)


def test_commands_val_predict_export(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["segment", "train", "--model", "repvit_m0_6", "--data", str(shapes), "--num-classes", "4",
            "--crop-size", "64", "--scale", "128", "96", "--max-iters", "6", "--eval-interval", "6",
            "--batch-size", "4", "--workers", "0", "--output", str(out)]
    assert main(args) == 0
    assert "best mIoU" in capsys.readouterr().out
    assert main(["segment", "val", "--weights", str(out / "checkpoint-best.pth"), "--json", "--workers", "0"]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert main(["segment", "val", "--weights", str(out / "checkpoint-best.pth"), "--json", "--unfused",
                 "--workers", "0"]) == 0
    unfused = json.loads(capsys.readouterr().out)
    assert fused["mIoU"] == pytest.approx(unfused["mIoU"], abs=1e-6)
    image = shapes / "images" / "validation" / "00000.jpg"
    assert main(["segment", "predict", str(image), "--weights", str(out / "model-best-deployed.pth"),
                 "--out", str(tmp_path / "pred")]) == 0
    png = tmp_path / "pred" / "00000_segmentation.png"
    assert Image.open(png).size == Image.open(image).size
    assert main(["segment", "export", "--weights", str(out / "checkpoint-best.pth"), "--img-size", "96",
                 "--out", str(tmp_path / "exp")]) == 0
    assert "onnx: ok" in capsys.readouterr().out


def test_bad_data_names_the_file(tmp_path, capsys):
    root = make_shapes_segmentation(tmp_path / "d", n_train=4, n_val=2, size=64)
    label = root / "annotations" / "training" / "00001.png"
    Image.fromarray(np.ones((32, 64), dtype=np.uint8)).save(label)
    with pytest.raises(DatasetError, match=r"00001\.png: label size 64x32 differs from the image's 64x64"):
        train_segmenter(_recipe(root, tmp_path / "r", max_iters=1))
    Image.fromarray(np.full((64, 64), 9, dtype=np.uint8)).save(label)  # 9 > 4 classes
    with pytest.raises(DatasetError, match=r"00001\.png: class id 9 is out of range for 4 classes"):
        train_segmenter(_recipe(root, tmp_path / "r", max_iters=2, batch_size=4))
    (root / "annotations" / "training" / "00002.png").unlink()
    capsys.readouterr()
    rc = main(["segment", "train", "--data", str(root), "--num-classes", "4", "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "00002.jpg: no label map" in err
