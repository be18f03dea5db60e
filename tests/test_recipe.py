"""The training recipe: the paper's values as defaults, YAML and command-line precedence, errors."""

import dataclasses

import pytest

from repvit.cli import build_parser
from repvit.train.recipe import DEIT_REGNETY160_URL, RecipeError, TrainRecipe, load_recipe, recipe_names


def test_defaults_are_the_papers_recipe():
    # every value from the fact sheet, section 4 ("Training recipe")
    r = TrainRecipe().validate()
    assert (r.epochs, r.opt, r.opt_eps, r.weight_decay) == (300, "adamw", 1e-8, 0.025)
    assert (r.base_lr, r.batch_size, r.warmup_epochs, r.warmup_lr, r.min_lr) == (1e-3, 256, 5, 1e-6, 1e-5)
    assert (r.clip_grad, r.clip_mode, r.smoothing) == (0.02, "agc", 0.1)
    assert (r.auto_augment, r.color_jitter, r.interpolation) == ("rand-m9-mstd0.5-inc1", 0.4, "bicubic")
    assert (r.reprob, r.remode, r.recount) == (0.25, "pixel", 1)
    assert (r.mixup, r.cutmix, r.mixup_prob, r.mixup_switch_prob, r.mixup_mode) == (0.8, 1.0, 1.0, 0.5, "batch")
    assert r.repeated_aug and r.model_ema and r.model_ema_decay == 0.99996 and not r.ema_eval
    assert (r.distillation, r.teacher, r.teacher_weights, r.distillation_alpha) == ("hard", "regnety_160", DEIT_REGNETY160_URL, 0.5)
    assert (r.img_size, r.crop_pct, r.drop_rate, r.seed) == (224, 0.875, 0.0, 0)
    # 8 GPUs x 256 images: the documented peak learning rate
    assert r.base_lr * r.batch_size * 8 / 512 == pytest.approx(4e-3)


def test_packaged_recipes():
    assert {"imagenet", "digits"} <= set(recipe_names())
    assert load_recipe("imagenet") == TrainRecipe().validate()  # the file spells out the defaults
    digits = load_recipe("digits")
    assert (digits.img_size, digits.mixup, digits.distillation, digits.amp, digits.hflip) == (32, 0.0, "none", "off", 0.0)


def test_precedence_and_saving(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text("epochs: 7\nlr: 0.001\nscale: [0.5, 1.0]\n")
    r = load_recipe(config, epochs=9)
    assert (r.epochs, r.lr, r.scale) == (9, 0.001, (0.5, 1.0))
    saved = r.save(tmp_path / "saved.yaml")
    assert load_recipe(saved) == r


@pytest.mark.parametrize("overrides, message", [
    ({"epoch": 3}, "unknown recipe key 'epoch'; did you mean 'epochs'"),
    ({"epochs": "many"}, "epochs: expected int, got 'many'"),
    ({"epochs": 2.5}, "epochs: expected int"),
    ({"amp": "fp8"}, "amp: expected one of auto, bf16, fp16, off"),
    ({"amp": False}, 'quote it'),
    ({"hflip": 1.5}, r"hflip must be in \[0, 1\]"),
    ({"img_size": 16}, "img_size must be >= 32"),
    ({"scale": [0.1]}, "scale: expected tuple"),
    ({"warmup_epochs": 10, "epochs": 5}, "warmup_epochs"),
    ({"distillation_tau": 0}, "distillation_tau must be > 0"),
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"batch_size": 33}, "batch_size must be even with mixup"),
])
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, **overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(RecipeError, match="no such file or packaged recipe"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_every_field_is_a_command_line_option():
    args = build_parser().parse_args(["train", "--warmup-epochs", "3", "--no-repeated-aug", "--scale", "0.2", "1"])
    assert (args.warmup_epochs, args.repeated_aug, args.scale) == ("3", False, ["0.2", "1"])
    assert not hasattr(args, "epochs")  # unset options do not override the config
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(TrainRecipe):
        assert f"--{f.name.replace('_', '-')}" in help_text
