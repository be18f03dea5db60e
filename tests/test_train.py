"""Short real training runs on tiny data: the recipe, distillation, fine-tuning, resume, bad data."""

import json
import logging

import pytest
import torch
from conftest import make_image_tree

import repvit
from repvit.cli import main
from repvit.data import DatasetError
from repvit.train import DistillationLoss, load_recipe, train

pytestmark = pytest.mark.train

TINY = dict(model="repvit_m0_6", img_size=32, batch_size=32, workers=0, distillation="none", teacher_weights=None)


def _recipe(data, output, config=None, **overrides):
    return load_recipe(config, **{**TINY, "data": str(data), "output": str(output), **overrides})


def test_default_recipe_trains(digits_root, tmp_path):
    # The paper's recipe (RandAugment, mixup/cutmix, label smoothing, random erasing, repeated
    # augmentation, EMA, AGC), scaled to a tiny run: no warm-up, a larger lr, 2 short epochs.
    recipe = _recipe(digits_root, tmp_path, epochs=2, warmup_epochs=0, lr=3e-3)
    assert recipe.mixup_active and recipe.repeated_aug and recipe.model_ema and recipe.clip_mode == "agc"
    result = train(recipe)
    first, second = result.history
    assert second["train_loss"] < first["train_loss"]
    assert second["val_top1"] > 20  # 10 classes: chance is 10%
    state = torch.load(result.checkpoint_last, weights_only=True)
    assert state["ema"] is not None and state["epoch"] == 1 and state["recipe"]["mixup"] == 0.8
    assert (tmp_path / "recipe.yaml").is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    # the best checkpoint is also saved reparameterized, with its class names
    deployed = repvit.create_model("repvit_m0_6", weights=result.deployed_best)
    assert deployed.deployed and repvit.read_checkpoint(result.deployed_best).class_names == [str(i) for i in range(10)]


def test_distillation_loss_definitions():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    x, targets = torch.randn(8, 4), torch.randint(0, 3, (8,))
    cls, dist = torch.randn(8, 3), torch.randn(8, 3)
    ce = torch.nn.CrossEntropyLoss()
    hard = DistillationLoss(ce, teacher, "hard", alpha=0.5)(x, (cls, dist), targets)
    expected = 0.5 * ce(cls, targets) + 0.5 * ce(dist, teacher(x).argmax(-1))
    assert torch.allclose(hard, expected)
    soft = DistillationLoss(ce, teacher, "soft", alpha=0.3, tau=2.0)(x, (cls, dist), targets)
    p_teacher = (teacher(x) / 2).softmax(-1)
    kl = (p_teacher * (p_teacher.log() - (dist / 2).log_softmax(-1))).sum(-1).mean() * 4
    assert torch.allclose(soft, 0.7 * ce(cls, targets) + 0.3 * kl, atol=1e-6)
    assert torch.allclose(DistillationLoss(ce, None, "none")(x, cls, targets), ce(cls, targets))
    with pytest.raises(ValueError, match="needs the student's"):
        DistillationLoss(ce, teacher, "hard")(x, cls, targets)


def test_hard_distillation_with_a_small_teacher(digits_root, tmp_path):
    torch.manual_seed(1)
    teacher_path = repvit.save_weights(repvit.create_model("repvit_m0_6", num_classes=10), tmp_path / "teacher.safetensors")
    recipe = _recipe(digits_root, tmp_path / "run", config="digits", epochs=1, distillation="hard",
                     teacher="repvit_m0_6", teacher_weights=str(teacher_path))
    result = train(recipe)
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    student = repvit.create_model("repvit_m0_6", weights=result.checkpoint_last)
    assert student.distillation  # the distillation head was trained and saved
    with pytest.raises(ValueError, match="needs teacher weights"):
        train(_recipe(digits_root, tmp_path / "x", config="digits", epochs=1, distillation="hard",
                      teacher="repvit_m0_6", teacher_weights=None))


def test_teacher_with_other_classes_is_refused(digits_root, tmp_path):
    teacher_path = repvit.save_weights(repvit.create_model("repvit_m0_6", num_classes=7), tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="predicts 7 classes but the data has 10"):
        train(_recipe(digits_root, tmp_path / "run", config="digits", epochs=1, distillation="hard",
                      teacher="repvit_m0_6", teacher_weights=str(teacher_path)))


def test_finetune_drops_a_classifier_of_other_classes(digits_root, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("repvit"), "propagate", True)  # the CLI (another test) turns it off
    torch.manual_seed(2)
    source = repvit.create_model("repvit_m0_6", distillation=True)  # 1000 classes, two heads
    source_path = repvit.save_weights(source, tmp_path / "imagenet.safetensors")
    recipe = _recipe(digits_root, tmp_path / "run", config="digits", epochs=1, lr=1e-12, min_lr=0.0,
                     warmup_lr=1e-12, finetune=str(source_path))
    with caplog.at_level(logging.INFO, logger="repvit"):
        result = train(recipe)
    assert "dropped its classifier (1000 classes, distillation head)" in caplog.text
    tuned = repvit.create_model("repvit_m0_6", weights=result.checkpoint_last)
    assert tuned.num_classes == 10 and not tuned.distillation
    # with a vanishing learning rate the backbone is still the checkpoint's
    for key in ("stem.conv1.conv.weight", "stages.3.blocks.0.channel_mixer.project.conv.weight"):
        assert torch.allclose(tuned.state_dict()[key], source.state_dict()[key], atol=1e-6)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    """3 classes x 8 images of 32 px: enough for the resume tests, a fraction of the digits' time."""
    return make_image_tree(tmp_path_factory.mktemp("small") / "data", per_class=8, size=32)


def test_resume_is_exact(small_tree, tmp_path):
    common = dict(config="digits", epochs=3, batch_size=4, hflip=0.5, mixup=0.2, reprob=0.2)  # randomness to replay
    straight = train(_recipe(small_tree, tmp_path / "straight", **common))
    first = train(_recipe(small_tree, tmp_path / "resumed", stop_after_epochs=1, **common))
    assert first.last_epoch == 1 and len(first.history) == 1
    resumed = train(_recipe(small_tree, tmp_path / "resumed", resume="auto", **common))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    a = torch.load(straight.checkpoint_last, weights_only=True)["state_dict"]
    b = torch.load(resumed.checkpoint_last, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_from_the_command_line_with_only_the_checkpoint(small_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", "digits", "--model", "repvit_m0_6", "--data", str(small_tree), "--output",
                 str(out), "--epochs", "3", "--stop-after-epochs", "1", "--batch-size", "4"]) == 0
    # the recipe comes from the checkpoint, without its --stop-after-epochs: the run finishes
    assert main(["train", "--resume", str(out / "checkpoint-last.pth")]) == 0
    assert "best val top-1" in capsys.readouterr().out
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert main(["train", "--resume", str(tmp_path / "nope.pth")]) == 2


def test_resume_auto_reads_the_checkpoint_recipe_and_may_extend_the_schedule(small_tree, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", "digits", "--model", "repvit_m0_6", "--data", str(small_tree), "--output",
                 str(out), "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "4"]) == 0
    # no --config: the digits recipe of the checkpoint, not the ImageNet defaults (which need a teacher)
    assert main(["train", "--resume", "auto", "--output", str(out), "--epochs", "4"]) == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # the cosine schedule follows the new length: epoch 3 of 4 is not at the minimum yet
    assert history[2]["lr"] > 10 * 1e-5


def test_resume_refuses_another_structure(small_tree, tmp_path):
    train(_recipe(small_tree, tmp_path, config="digits", batch_size=4, epochs=2, stop_after_epochs=1))
    teacher = repvit.save_weights(repvit.create_model("repvit_m0_6", num_classes=3), tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="the checkpoint has distillation=False, this run True"):
        train(_recipe(small_tree, tmp_path, config="digits", batch_size=4, epochs=2, resume="auto", distillation="hard",
                      teacher="repvit_m0_6", teacher_weights=str(teacher)))


def test_finetune_with_resume_auto_on_a_fresh_run(digits_root, tmp_path):
    torch.manual_seed(3)
    source = repvit.create_model("repvit_m0_6", num_classes=10)
    path = repvit.save_weights(source, tmp_path / "src.safetensors")
    result = train(_recipe(digits_root, tmp_path / "run", config="digits", epochs=1, lr=1e-12, min_lr=0.0,
                           warmup_lr=1e-12, finetune=str(path), resume="auto"))
    tuned = torch.load(result.checkpoint_last, weights_only=True)["state_dict"]
    assert torch.allclose(tuned["stem.conv1.conv.weight"], source.state_dict()["stem.conv1.conv.weight"], atol=1e-6)


def test_hidden_folders_are_not_classes(tmp_path):
    root = make_image_tree(tmp_path / "data", per_class=6)
    for split in ("train", "val"):
        hidden = root / split / ".ipynb_checkpoints"
        hidden.mkdir()
        (root / split / "cat" / "0.png").replace(hidden / "0.png")
    result = train(_recipe(root, tmp_path / "run", config="digits", epochs=1, batch_size=4))
    assert result.class_names == ["cat", "dog", "owl"] and result.history[0]["val_n"] == 17


def test_teacher_from_a_timm_training_checkpoint(tmp_path):
    import argparse

    import timm

    from repvit.train import build_teacher

    source = timm.create_model("regnety_002", num_classes=10)
    path = tmp_path / "teacher.pth"
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()},
                "args": argparse.Namespace(lr=0.1)}, path)
    teacher = build_teacher("regnety_002", str(path), 10, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher(x), source.eval()(x))
    with pytest.raises(ValueError, match="predicts 10 classes but the data has 5"):
        build_teacher("regnety_002", str(path), 5, torch.device("cpu"))
    with pytest.raises(ValueError, match="does not fit timm's regnety_004"):
        build_teacher("regnety_004", str(path), 10, torch.device("cpu"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02junk")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        build_teacher("regnety_002", str(junk), 10, torch.device("cpu"))


def test_unknown_augmentation_policy(digits_root, tmp_path):
    with pytest.raises(ValueError, match="auto_augment 'bogus': not a timm augmentation policy"):
        train(_recipe(digits_root, tmp_path, config="digits", epochs=1, auto_augment="bogus"))


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    root = make_image_tree(tmp_path / "data", per_class=12)
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "val" / "owl" / "cut.png").write_bytes((root / "val" / "owl" / "0.png").read_bytes()[:40])
    result = train(_recipe(root, tmp_path / "run", config="digits", epochs=1, batch_size=8, repeated_aug=False))
    record = result.history[0]
    assert record["unreadable_train_images"] == 2 and record["unreadable_val_images"] == 1
    assert record["val_n"] == 3 * 12  # 36 good images + the cut one


@pytest.mark.parametrize("layout, message", [
    ("missing", "no such directory"),
    ("no_val", "expected a 'val' folder"),
    ("no_classes", "no class folders"),
    ("empty_class", "owl: no images"),
    ("mismatch", r"class folders differ between train/ and val/ \(only in train: \['owl'\]"),
])
def test_bad_datasets(tmp_path, layout, message, capsys):
    root = tmp_path / "data"
    if layout != "missing":
        make_image_tree(root, per_class=2)
    if layout == "no_val":
        import shutil

        shutil.rmtree(root / "val")
    elif layout == "no_classes":
        import shutil

        for d in (root / "train").iterdir():
            shutil.rmtree(d)
    elif layout == "empty_class":
        for f in (root / "train" / "owl").iterdir():
            f.unlink()
    elif layout == "mismatch":
        import shutil

        shutil.rmtree(root / "val" / "owl")
    with pytest.raises(DatasetError, match=message):
        train(_recipe(root, tmp_path / "run", epochs=1))
    rc = main(["train", "--data", str(root), "--output", str(tmp_path / "run"), "--distillation", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and message.split("\\")[0].split("(")[0] in err


def test_val_command_compares_both_structures(digits_root, tmp_path, capsys):
    result = train(_recipe(digits_root, tmp_path / "run", config="digits", epochs=1))
    rc = main(["val", "--model", "repvit_m0_6", "--weights", str(result.checkpoint_best), "--data", str(digits_root),
               "--img-size", "32", "--crop-pct", "1.0", "--workers", "0", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train"] == out["deployed"] and out["prediction_agreement"] == 100.0 and out["n"] == 359
    assert out["train"]["top1"] == pytest.approx(result.best_top1)
    assert main(["val", "--model", "repvit_m0_6", "--weights", str(result.checkpoint_best), "--data",
                 str(make_image_tree(tmp_path / "other"))]) == 2
    assert "3 class folders, the checkpoint has 10 classes" in capsys.readouterr().err


def test_randaugment_at_full_magnitude_survives_pillow():
    # timm asks Posterize for 0 bits at the top magnitudes; Pillow 13 raises on it (see repvit.data)
    from PIL import Image

    from repvit.data import train_transform

    transform = train_transform(load_recipe(None, img_size=32, auto_augment="rand-m10-n3-mstd0"))
    image = Image.new("RGB", (40, 40), (120, 60, 200))
    torch.manual_seed(0)
    for _ in range(200):
        assert transform(image).shape == (3, 32, 32)


def test_bf16_and_channels_last(digits_root, tmp_path):
    result = train(_recipe(digits_root, tmp_path, config="digits", epochs=1, amp="bf16", channels_last=True))
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    model = repvit.create_model("repvit_m0_6", weights=result.checkpoint_last)  # saved in float32, plain layout
    assert model.stem.conv1.conv.weight.dtype == torch.float32
