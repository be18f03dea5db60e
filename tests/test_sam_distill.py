"""RepViT-SAM distillation: the teacher cache (built, reused, resumed after a kill), teacher
agreement on cases with a known answer, and a 2-process torchrun run whose checkpoint loads in
create_sam and, in the official layout, in the official encoder."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from reference_official import OfficialSamEncoder
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT

import repvit.sam.teacher as teacher_module
from repvit import create_model
from repvit.cli import main
from repvit.data import shapes_scene
from repvit.reparam import reparameterize
from repvit.sam import create_sam
from repvit.sam.distill import agreement_prompts, held_out_split, image_key, prompt_masks, teacher_agreement
from repvit.sam.teacher import build_teacher, random_teacher, teacher_cache
from repvit.utils import UserError
from repvit.weights import CheckpointError, convert_state_dict, to_official

pytestmark = pytest.mark.sam

SIZE = 64  # teacher and student input (a 4x4 embedding): 1024 in real use


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Ten generated shape images (64 px) and a random 2-block ViT teacher saved as a SAM checkpoint."""
    root = tmp_path_factory.mktemp("distill")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        shapes_scene(rng, SIZE, 3)[0].save(folder / f"img{i:02d}.png")
    teacher = random_teacher("vit_tiny", SIZE, seed=0)
    torch.save(teacher.state_dict(), root / "teacher.pth")
    return folder, root / "teacher.pth", teacher


def test_to_official_gives_the_official_layout_and_converts_back():
    ours = create_sam(img_size=SIZE).image_encoder.body.state_dict()
    official = to_official(ours)
    assert list(official) == [k for k in OfficialSamEncoder().state_dict() if k.startswith("features.")]
    back, kind = convert_state_dict(official)
    assert kind == "official" and set(back) == set(ours)
    assert all(back[k] is ours[k] for k in ours)
    model = create_model("repvit_m0_9", num_classes=10, distillation=True)  # a classifier: rows and both heads
    assert set(to_official(model.state_dict())) >= {"classifier.classifier.l.weight", "classifier.classifier_dist.l.bias"}
    assert list(to_official(reparameterize(model).state_dict()))[-2:] == ["classifier.weight", "classifier.bias"]


def _count_encoder_calls(monkeypatch) -> list[int]:
    calls = [0]
    forward = ImageEncoderViT.forward

    def counted(self, x):
        calls[0] += 1
        return forward(self, x)

    monkeypatch.setattr(ImageEncoderViT, "forward", counted)
    return calls


def test_teacher_cache_builds_reuses_and_resumes_after_a_kill(images, tmp_path, monkeypatch):
    folder, weights, teacher = images
    args = dict(kind="vit_tiny", weights=weights, img_size=SIZE, shard_size=2, batch_size=2)  # a forward per shard
    # a build killed (SIGKILL) in its third teacher forward: two of five shards were written
    script = textwrap.dedent(f"""
        import os, signal
        from segment_anything.modeling import ImageEncoderViT
        from repvit.sam.teacher import teacher_cache
        forward, calls = ImageEncoderViT.forward, [0]
        def dying(self, x):
            calls[0] += 1
            if calls[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(self, x)
        ImageEncoderViT.forward = dying
        teacher_cache({str(folder)!r}, {args['kind']!r}, {str(weights)!r}, {SIZE}, {str(tmp_path / 'cache')!r}, 2, 2)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    shards = sorted((tmp_path / "cache").glob("*/shard-*.pt"))
    assert len(shards) == 2 and not list((tmp_path / "cache").glob("*/*.tmp*"))
    written = {p: p.stat().st_mtime_ns for p in shards}

    calls = _count_encoder_calls(monkeypatch)
    cache = teacher_cache(folder, cache_dir=tmp_path / "cache", **args)
    assert calls[0] == 3 and cache.missing() == []  # only the three missing shards computed
    assert {p: p.stat().st_mtime_ns for p in shards} == written
    with torch.no_grad():  # what the teacher gives for image 7, computed here directly
        from repvit.data import load_image
        from repvit.sam.model import sam_input

        pixels, size = sam_input(np.asarray(load_image(cache.files[7])), SIZE)
        expected = teacher.image_encoder(pixels[None])[0]
    assert cache.embedding(7).dtype == torch.float16 and cache.size(7) == size
    torch.testing.assert_close(cache.embedding(7).float(), expected, atol=2e-3, rtol=2e-3)

    calls[0], reads = 0, []
    read = teacher_module.read_teacher_state
    monkeypatch.setattr(teacher_module, "read_teacher_state", lambda *a: reads.append(a) or read(*a))
    again = teacher_cache(folder, cache_dir=tmp_path / "cache", **args)  # a later run: nothing recomputed
    assert calls[0] == 0 and again.shard_paths == cache.shard_paths
    assert reads == []  # ... nor the teacher's weights even read
    shapes_scene(np.random.default_rng(1), SIZE, 3)[0].save(folder / "img99.png")
    try:
        grown = teacher_cache(folder, cache_dir=tmp_path / "cache", **args)
        assert calls[0] == 1 and grown.shard_paths[:5] == cache.shard_paths  # only the new image's shard
    finally:
        (folder / "img99.png").unlink()


def test_missing_images_and_another_teachers_weights_are_one_line_errors(images, tmp_path, capsys):
    folder, weights, _ = images
    code = main(["sam", "distill", "--images", str(tmp_path / "nowhere"), "--teacher", "vit_tiny", "--teacher-weights",
                 str(weights), "--teacher-cache", str(tmp_path / "cache"), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--data" in err and "nowhere: no such folder or image" in err and len(err.splitlines()) == 1
    with pytest.raises(CheckpointError, match=r"not SAM vit_b weights \(.*\); its width is vit_tiny's"):
        teacher_cache(folder, "vit_b", weights, SIZE, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_teacher_agreement_has_known_answers():
    torch.manual_seed(0)
    sam = create_sam(img_size=SIZE)
    embedding = torch.randn(256, SIZE // 16, SIZE // 16)
    size = (SIZE, 48)  # a portrait image resized into the square input: prompts stay inside it
    points, boxes = agreement_prompts(image_key("a.jpg"), size, 4)
    assert torch.equal(points, agreement_prompts(image_key("dir/a.jpg"), size, 4)[0])  # by name, every time
    assert not torch.equal(points, agreement_prompts(image_key("b.jpg"), size, 4)[0])
    assert (points[:, 0] < 48).all() and (points[:, 1] < SIZE).all() and (boxes[:, 2] <= 48).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # the masks are SamPredictor's for the same embedding and prompts (best of three for a point)
    predictor = SamPredictor(sam)
    predictor.features, predictor.input_size, predictor.original_size = embedding[None], size, size
    predictor.is_image_set = True
    masks, scores, _ = predictor.predict_torch(points[:, None], torch.ones(4, 1), multimask_output=True)
    expected = masks[torch.arange(4), scores.argmax(1)]
    ours = prompt_masks(sam, embedding, size, points=points)
    assert torch.equal(ours, expected) and ours.flatten(1).any(1).all() and not ours.flatten(1).all(1).any()
    masks, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
    assert torch.equal(prompt_masks(sam, embedding, size, boxes=boxes), masks[:, 0])
    same = teacher_agreement(sam, embedding, embedding.clone(), size, points, boxes)
    assert same == {"point": [1.0] * 4, "box": [1.0] * 4}  # student = teacher: mIoU 100
    other = teacher_agreement(sam, -embedding, embedding, size, points, boxes)
    assert min(other["point"] + other["box"]) < 0.9


def test_a_teacher_released_at_another_size_loads_with_resized_positions(images, tmp_path):
    _, weights, teacher = images  # saved at 64 px: a 4x4 grid; loaded at 128 px: 8x8
    larger = build_teacher("vit_tiny", weights, img_size=2 * SIZE)
    grid = 2 * SIZE // 16
    assert larger.image_encoder.pos_embed.shape == (1, grid, grid, 64)
    assert larger.image_encoder.blocks[1].attn.rel_pos_h.shape[0] == 2 * grid - 1  # the global-attention block
    same = {k: v for k, v in teacher.state_dict().items() if "pos" not in k}
    assert all(torch.equal(larger.state_dict()[k], v) for k, v in same.items())
    with torch.no_grad():
        assert larger.image_encoder(torch.randn(1, 3, 2 * SIZE, 2 * SIZE)).shape == (1, 256, grid, grid)
    torch.save({"model": {"image_encoder.patch_embed.proj.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth: not SAM vit_tiny weights \(missing "):
        build_teacher("vit_tiny", tmp_path / "other.pth", img_size=SIZE)
    with pytest.raises(UserError, match=r"teacher.weights is required for (--)?teacher vit_tiny"):
        build_teacher("vit_tiny", None, img_size=SIZE)


def test_held_out_split_is_stable_and_never_empty(tmp_path):
    files = [tmp_path / f"{i}.jpg" for i in range(50)]
    train, held = held_out_split(files, 0.1, 100)
    assert len(held) == 5 and sorted(train + held) == list(range(50))
    grown = files + [tmp_path / "new.jpg"]
    _, held_grown = held_out_split(grown, 0.1, 100)  # a new image displaces at most one held-out image
    assert len({files[i].name for i in held} - {grown[i].name for i in held_grown}) <= 1
    assert len(held_out_split(files[:3], 0.01, 100)[1]) == 1


def test_two_process_distillation_writes_a_checkpoint_create_sam_and_the_official_code_load(images, tmp_path):
    folder, weights, teacher = images
    output = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "repvit",
               "sam", "distill", "--images", str(folder), "--teacher", "vit_tiny", "--teacher-weights", str(weights),
               "--img-size", str(SIZE), "--epochs", "2", "--batch-size", "2", "--workers", "0", "--val-split", "0.2",
               "--teacher-cache", str(tmp_path / "cache"), "--shard-size", "3", "--log-interval", "1", "--device",
               "cpu", "--output", str(output)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best teacher agreement") == 1  # one summary, from rank 0
    assert len(list((tmp_path / "cache").glob("*/shard-*.pt"))) == 4  # both processes' shares
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "val_teacher_mIoU" in r]
    assert [r["epoch"] for r in evaluations] == [1, 2]  # 8 training images, 2 processes x 2: 2 iterations an epoch
    assert all(0 <= r["val_teacher_mIoU"] <= 100 and r["val_embedding_mse"] > 0 for r in evaluations)

    state = torch.load(output / "repvit_sam.pt", weights_only=True)
    assert "image_encoder.features.0.0.c.weight" in state  # the released checkpoint's layout
    sam = create_sam(output / "repvit_sam.pt", img_size=SIZE)
    best = torch.load(output / "checkpoint-best.pth", weights_only=True)
    loaded = sam.state_dict()  # once: building a state_dict per key made this loop quadratic (~10 s)
    for key, value in best["state_dict"].items():  # the best student...
        assert torch.equal(loaded[f"image_encoder.{key}"], value)
    for key, value in teacher.state_dict().items():  # ... with the teacher's prompt encoder and mask decoder
        if not key.startswith("image_encoder."):
            assert torch.equal(loaded[key], value)
    official = OfficialSamEncoder()  # the official code's encoder loads its part strictly
    official.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(official.eval()(x), sam.image_encoder(x), atol=1e-4, rtol=1e-4)
        fused = create_sam(output / "repvit_sam_fused.safetensors", img_size=SIZE)
        assert fused.image_encoder.deployed
        torch.testing.assert_close(fused.image_encoder(x), sam.image_encoder(x), atol=1e-3, rtol=1e-3)
