"""Mask R-CNN on RepViT + FPN: training on generated shapes, COCO AP, resume, fusion, bad data."""

import json

import numpy as np
import pytest
import torch
from conftest import settle_batchnorm

import repvit
from repvit.cli import main
from repvit.data import DatasetError, make_shapes_coco
from repvit.dense import CocoDataset, DetectRecipe, build_detector, coco_evaluate, train_detector

pytestmark = pytest.mark.dense

SMALL = dict(model="repvit_m0_6", min_size=96, max_size=96, batch_size=2, workers=0, warmup_iters=2,
             rpn_proposals=200, roi_samples=64, log_interval=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_coco(tmp_path_factory.mktemp("coco"), n_train=8, n_val=4, size=96)


def _recipe(data, output, **kw):
    return DetectRecipe.load(None, **{**SMALL, "data": str(data), "output": str(output), **kw})


def test_trains_and_reports_coco_ap(shapes, tmp_path):
    result = train_detector(_recipe(shapes, tmp_path, epochs=2, lr=3e-4, lr_steps=(5, 6)))
    logged = [h for h in result["history"] if "train_loss" in h]
    assert logged[-1]["train_loss"] < logged[0]["train_loss"]
    for part in ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        assert f"train_{part}" in logged[0]
    best = result["best"]
    for kind in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "APm"):
            assert 0 <= best[f"{kind}_{name}"] <= 100
        assert best[f"{kind}_APl"] is None  # no large objects in 96-pixel images: not a score of 0


def test_mask_size_ranges_use_the_mask_area(shapes):
    # a thin diagonal mask has a large box but a small area: COCO bins it as small for segm
    from pycocotools import mask as coco_mask

    data = json.loads((shapes / "annotations" / "instances_val2017.json").read_text())
    image = data["images"][0]
    diagonal = np.zeros((image["height"], image["width"]), dtype=np.uint8)
    for i in range(90):
        diagonal[i, i] = 1
    rle = coco_mask.encode(np.asfortranarray(diagonal))
    rle["counts"] = rle["counts"].decode("ascii")
    truth = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
              "segmentation": coco_mask.frPyObjects(a["segmentation"], image["height"], image["width"])[0]}
             for a in data["annotations"]]
    for t in truth:
        t["segmentation"]["counts"] = t["segmentation"]["counts"].decode("ascii")
    wrong = {"image_id": image["id"], "category_id": 1, "bbox": [0, 0, 90, 90], "score": 0.5, "segmentation": rle}
    metrics = coco_evaluate(shapes / "annotations" / "instances_val2017.json", truth + [wrong], ("segm",))
    assert metrics["segm_APm"] == pytest.approx(100.0)  # the false positive is small, not medium


def test_coco_evaluation_of_perfect_detections(shapes):
    data = json.loads((shapes / "annotations" / "instances_val2017.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in data["annotations"]]
    metrics = coco_evaluate(shapes / "annotations" / "instances_val2017.json", perfect, ("bbox",))
    assert metrics["bbox_AP"] == pytest.approx(100.0) and metrics["bbox_AP50"] == pytest.approx(100.0)
    wrong = [{**d, "category_id": d["category_id"] % 3 + 1} for d in perfect]  # right boxes, wrong classes
    assert coco_evaluate(shapes / "annotations" / "instances_val2017.json", wrong, ("bbox",))["bbox_AP"] == 0.0


def test_resume_is_exact(shapes, tmp_path):
    common = dict(epochs=1, lr_steps=(5, 6), fpn_channels=32)  # exactness does not need the 256-wide heads
    train_detector(_recipe(shapes, tmp_path / "a", **common))
    train_detector(_recipe(shapes, tmp_path / "b", stop_after_iters=2, **common))
    train_detector(_recipe(shapes, tmp_path / "b", resume="auto", **common))
    a = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=True)["state_dict"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_reparameterized_detector_gives_the_same_detections(shapes):
    torch.manual_seed(0)
    model = build_detector(DetectRecipe.load(None, model="repvit_m0_6", min_size=96, max_size=96,
                                             score_thresh=0.0), num_classes=3)
    settle_batchnorm(model.backbone.body, img_size=96)
    model.eval()
    deployed = repvit.reparameterize(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    image = CocoDataset(shapes / "val2017", shapes / "annotations" / "instances_val2017.json", False, True)[0][0]
    with torch.no_grad():
        features = model.backbone(image[None])
        fused = deployed.backbone(image[None])
        for key in features:
            assert torch.allclose(features[key], fused[key], atol=1e-4, rtol=1e-4)
        a, b = model([image])[0], deployed([image])[0]
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-2) and torch.allclose(a["scores"], b["scores"], atol=1e-3)


def test_commands_val_and_predict(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["detect", "train", "--model", "repvit_m0_6", "--data", str(shapes), "--min-size", "96",
                 "--max-size", "96", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--detector",
                 "faster_rcnn", "--rpn-proposals", "200", "--roi-samples", "64", "--fpn-channels", "32", "--output",
                 str(out)]) == 0
    assert "best box AP" in capsys.readouterr().out
    assert main(["detect", "val", "--weights", str(out / "checkpoint-best.pth"), "--json", "--workers", "0"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {f"bbox_{n}" for n in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert main(["detect", "predict", str(shapes / "val2017" / "00000.png"), "--weights",
                 str(out / "model-best-deployed.pth"), "--out", str(tmp_path / "pred"), "--score", "0"]) == 0
    assert (tmp_path / "pred" / "00000_detections.png").is_file()


def test_retinanet_builds_and_trains_a_step(shapes):
    model = build_detector(DetectRecipe.load(None, model="repvit_m0_6", detector="retinanet", min_size=96,
                                             max_size=96), num_classes=3)
    dataset = CocoDataset(shapes / "train2017", shapes / "annotations" / "instances_train2017.json", True, False)
    images, targets = zip(*[dataset[0], dataset[1]])
    losses = model.train()(list(images), list(targets))
    sum(losses.values()).backward()
    assert set(losses) == {"classification", "bbox_regression"}


@pytest.mark.parametrize("corruption, message", [
    ("json", "not valid JSON"),
    ("keys", "expected a COCO json object"),
    ("category", "has category_id 7, not one of the categories"),
    ("image_ref", "refers to unknown image 999"),
    ("missing_file", r"00001\.png: image missing on disk \(1 of 8"),
    ("polygon", r"annotation 1 \(image 1\): a polygon must be a flat list of at least 3 x, y pairs"),
    ("no_segmentation", r"annotation 1 \(image 1\): empty segmentation"),
])
def test_bad_annotations_name_the_file(shapes, tmp_path, corruption, message, capsys):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(shapes, root)
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    if corruption == "json":
        ann.write_text(ann.read_text()[:-20])
    elif corruption == "keys":
        ann.write_text(json.dumps({"images": data["images"]}))
    elif corruption == "category":
        data["annotations"][0]["category_id"] = 7
        ann.write_text(json.dumps(data))
    elif corruption == "image_ref":
        data["annotations"][0]["image_id"] = 999
        ann.write_text(json.dumps(data))
    elif corruption in ("polygon", "no_segmentation"):
        data["annotations"][0]["segmentation"] = [[1, 1, 10, 10]] if corruption == "polygon" else []
        ann.write_text(json.dumps(data))
    else:
        (root / "train2017" / "00001.png").unlink()
    with pytest.raises(DatasetError, match=message):
        train_detector(_recipe(root, tmp_path / "r", epochs=1))
    capsys.readouterr()
    rc = main(["detect", "train", "--data", str(root), "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert ("00001.png" if corruption == "missing_file" else "instances_train2017.json") in err
