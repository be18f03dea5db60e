"""The module paths of the previous release keep working for one release, with a DeprecationWarning."""

import dataclasses
import importlib
import sys

import pytest

import repvit
from repvit.layers import RepViTBlock
from repvit.specs import BlockSpec
from repvit.tools import roadmap_markdown
from repvit.train.process import all_reduce_sum

MOVED = {  # old module -> (a name it had, where that name lives now)
    "repvit.complexity": ("model_stats", "repvit.tools.complexity"),
    "repvit.published": ("published", "repvit.tools.published"),
    "repvit.predict": ("predict", "repvit.tools.predict"),
    "repvit.recipe": ("TrainRecipe", "repvit.train.recipe"),
    "repvit.engine": ("train", "repvit.train.classification"),
    "repvit.distill": ("build_teacher", "repvit.train.distill"),
    "repvit.quickstart": ("run_quickstart", "repvit.tools.quickstart"),
    "repvit.roadmap": ("STEPS", "repvit.models.roadmap"),
    "repvit.detection": ("train_detector", "repvit.dense.detection"),
    "repvit.segmentation": ("train_segmenter", "repvit.dense.segmentation"),
    "repvit.synthetic": ("make_shapes_coco", "repvit.data.synthetic"),
    "repvit.quantize": ("quantize_eval", "repvit.export.int8"),
    "repvit.qat": ("prepare_qat", "repvit.train.qat"),
    "repvit.bench": ("run_bench", "repvit.tools.bench"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_still_work_and_warn(old):
    name, new = MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_create_model_keeps_its_old_home():
    import repvit.models

    with pytest.warns(DeprecationWarning, match="repvit.models.create_model moved to repvit.factory"):
        assert repvit.models.create_model is repvit.create_model
    with pytest.raises(AttributeError):
        repvit.models.no_such_name  # noqa: B018


def test_renamed_expansion_argument():
    with pytest.warns(DeprecationWarning, match="mlp_ratio"):
        spec = repvit.RepViTSpec((8,), (1,), mlp_ratio=3.0)
    assert spec.expansion == spec.mlp_ratio == 3.0 and spec == repvit.RepViTSpec((8,), (1,), expansion=3.0)
    assert dataclasses.replace(spec, legacy=True).expansion == 3.0
    with pytest.warns(DeprecationWarning, match="ratio"):
        block = BlockSpec("repvit", 8, ratio=4.0)
    assert block.expansion == block.ratio == 4.0
    with pytest.warns(DeprecationWarning, match="mlp_ratio"):
        layer = RepViTBlock(8, mlp_ratio=4.0)
    assert layer.channel_mixer.expand.conv.out_channels == 32


def test_moved_private_and_cli_names():
    import repvit.cli
    import repvit.dense

    with pytest.warns(DeprecationWarning):
        assert repvit.dense._all_reduce_sum is all_reduce_sum
    with pytest.warns(DeprecationWarning):
        assert repvit.cli.roadmap_markdown is roadmap_markdown
