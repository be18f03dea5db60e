"""RepViT-SAM: an official-layout checkpoint loads strictly and computes what the official layout
computes; fused and unfused give the same embedding and masks; our own files reload."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import settle_batchnorm
from PIL import Image
from reference_official import OfficialSamEncoder
from segment_anything import SamPredictor

import repvit
from repvit.cli import main
from repvit.sam import create_sam, read_sam_state, save_sam
from repvit.utils import UserError
from repvit.weights import CheckpointError

pytestmark = pytest.mark.sam

SIZE = 256  # the input (the embedding is SIZE/16 square): 1024 as released, smaller here for speed


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """``repvit_sam.pt`` in the official layout with deterministic, non-trivial weights, and the
    official-layout encoder that produced it."""
    torch.manual_seed(0)
    encoder = settle_batchnorm(OfficialSamEncoder(), img_size=64)
    with torch.no_grad():
        # residual branches small against the stream, as in trained networks (the official code
        # initialises them at 0): random ones compound over 54 blocks to activations of ~1e4
        for name, module in encoder.named_modules():
            if name.endswith("channel_mixer.m.2.bn"):
                module.weight.mul_(0.1)
                module.bias.mul_(0.1)
        for module in encoder.neck:
            if hasattr(module, "eps"):  # LayerNorm2d: not the identity
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    decoder = create_sam(img_size=SIZE).state_dict()
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({k: v for k, v in decoder.items() if not k.startswith("image_encoder.")})
    path = tmp_path_factory.mktemp("sam") / "repvit_sam.pt"
    torch.save(state, path)
    return path, encoder.eval()


def _image(seed=0):
    """A generated RGB picture: a bright disc on a textured background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image[(yy - 100) ** 2 + (xx - 140) ** 2 < 50**2] = (230, 200, 40)
    return image


def test_the_official_checkpoint_loads_strictly_and_matches_the_official_layout(official, tmp_path):
    path, reference = official
    sam = create_sam(path, img_size=SIZE)
    assert sum(p.numel() for p in sam.image_encoder.parameters()) == 23_158_920  # 23.16M, as measured upstream
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = sam.image_encoder(x), reference(x)
    assert ours.shape == (1, 256, SIZE // 16, SIZE // 16)
    assert sam.image_encoder.body.feature_info.reduction() == [16]  # the last stage keeps stride 16
    assert _relative(ours, theirs) <= 1e-4
    # strict: one missing or renamed tensor is an error naming it
    state = torch.load(path, weights_only=True)
    state["image_encoder.neck.0.weightx"] = state.pop("image_encoder.neck.0.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"not RepViT-SAM weights: tensor 'image_encoder.neck.0.weight'"):
        create_sam(tmp_path / "renamed.pt", img_size=SIZE)
    classifier = repvit.save_weights(repvit.create_model("repvit_m0_6"), tmp_path / "m0_6.safetensors")
    with pytest.raises(CheckpointError, match="not a RepViT-SAM checkpoint"):
        create_sam(classifier, img_size=SIZE)


def test_fused_and_unfused_give_the_same_embedding_and_masks(official):
    sam = create_sam(official[0], img_size=SIZE)
    with torch.no_grad():  # the fusion is exact: in float64 only rounding is left
        x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        encoder64 = copy.deepcopy(sam.image_encoder).double()
        assert _relative(repvit.reparameterize(encoder64)(x), encoder64(x)) <= 1e-10
    fused = repvit.reparameterize(sam)
    assert fused.image_encoder.deployed and not sam.image_encoder.deployed  # a new model; the input untouched
    assert type(fused.mask_decoder) is type(sam.mask_decoder)
    image = _image()
    predictors = [SamPredictor(model) for model in (sam, fused)]
    for predictor in predictors:
        predictor.set_image(image)  # the embedding, once per image
    assert _relative(predictors[1].features, predictors[0].features) <= 1e-4
    prompts = [dict(point_coords=np.array([[140, 100]]), point_labels=np.array([1])),
               dict(point_coords=np.array([[140, 100], [20, 20]]), point_labels=np.array([1, 0])),
               dict(box=np.array([80, 40, 200, 160]))]
    for prompt in prompts:
        (masks_a, scores_a, logits_a), (masks_b, scores_b, logits_b) = (
            p.predict(**prompt, multimask_output=True) for p in predictors)
        assert masks_a.shape == (3, SIZE, SIZE) and logits_a.shape == (3, SIZE // 4, SIZE // 4)
        assert _relative(torch.from_numpy(logits_b), torch.from_numpy(logits_a)) <= 1e-4
        assert np.abs(scores_a - scores_b).max() <= 1e-4
        agreement = (masks_a == masks_b).mean()
        assert agreement >= 0.999  # a pixel may flip only where its logit is ~0


def test_our_own_files_reload_fused_or_not(official, tmp_path):
    sam = create_sam(official[0], img_size=SIZE)
    fused = create_sam(official[0], img_size=SIZE, deploy=True)
    assert fused.image_encoder.deployed
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = sam.image_encoder(x)
        for model, name in ((sam, "train.safetensors"), (fused, "fused.safetensors")):
            path = save_sam(model, tmp_path / name)
            _, is_fused, _ = read_sam_state(path)
            again = create_sam(path, img_size=SIZE)
            assert is_fused == model.image_encoder.deployed == again.image_encoder.deployed
            assert _relative(again.image_encoder(x), expected) <= 1e-4


def test_sam_predict_and_auto_on_the_command_line(official, tmp_path, capsys):
    from segment_anything.utils.amg import rle_to_mask

    image = tmp_path / "picture.png"
    Image.fromarray(_image()).save(image)
    weights, out = str(official[0]), tmp_path / "out"
    common = ["--weights", weights, "--img-size", str(SIZE), "--out", str(out)]
    assert main(["sam", "predict", str(image), "--point", "140,100", "--point", "20,20,0", "--box", "80,40,200,160",
                 "--multimask", *common]) == 0
    assert "3 mask(s)" in capsys.readouterr().out
    result = json.loads((out / "picture_masks.json").read_text())
    assert result["size"] == [SIZE, SIZE] and result["prompt"]["labels"] == [1, 0]
    scores = [m["score"] for m in result["masks"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    for record in result["masks"]:  # the RLE and the PNG hold the same mask
        png = np.asarray(Image.open(out / record["file"])) > 0
        assert (rle_to_mask(record["rle"]) == png).all() and record["area"] == png.sum()
    assert Image.open(out / "picture_overlay.png").size == (SIZE, SIZE)
    # one click is ambiguous: SAM's three candidates are computed and the best one kept
    assert main(["sam", "predict", str(image), "--point", "140,100", "--multimask", *common]) == 0
    three = json.loads((out / "picture_masks.json").read_text())["masks"]
    assert main(["sam", "predict", str(image), "--point", "140,100", *common]) == 0
    single = json.loads((out / "picture_masks.json").read_text())["masks"]
    assert len(three) == 3 and len(single) == 1 and single[0]["rle"] == three[0]["rle"]
    # every object: thresholds at 0 keep what random weights predict, so there is something to write
    assert main(["sam", "auto", str(image), "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-thresh", "0", *common]) == 0
    found = json.loads((out / "picture_masks.json").read_text())["masks"]
    assert found and all(rle_to_mask(m["rle"]).sum() == m["area"] for m in found)


@pytest.mark.parametrize("args, message", [
    (["--point", "300,20"], "--point 300,20 lies outside the 256x256 image"),
    (["--point", "1,2,3,4"], "--point '1,2,3,4': expected X,Y or X,Y,LABEL"),
    (["--point", "5,5,2"], "LABEL 1 (foreground) or 0 (background)"),
    (["--box", "50,50,10,10"], "--box 50,50,10,10: expected 0 <= X0 < X1 <= 256"),
    ([], "give at least one --point X,Y or a --box"),
])
def test_bad_prompts_are_one_line(tmp_path, capsys, args, message):
    image = tmp_path / "picture.png"
    Image.fromarray(_image()).save(image)
    # checked before any weights are read: a missing checkpoint is never reached
    assert main(["sam", "predict", str(image), *args, "--weights", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_sam_export_of_the_fused_encoder(official, tmp_path, capsys):
    out = tmp_path / "exports"
    assert main(["sam", "export", "--format", "onnx", "--weights", str(official[0]), "--img-size", str(SIZE),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "encoder onnx: ok" in printed and "decoder onnx: ok" in printed
    decoder = json.loads((out / "repvit_sam_decoder.json").read_text())
    checks = decoder["files"]["onnx"]["checks"]
    assert decoder["files"]["onnx"]["status"] == "ok" and set(checks) >= {"one point", "box (labels 2, 3)"}
    for check in checks.values():  # any number of points, a mask input, in ONNX Runtime
        assert check["max_abs_diff"] <= 1e-3 and check["mask_iou"] >= 0.99
    assert checks["five points"]["masks_shape"] == [1, 4, SIZE // 4, SIZE // 4]
    info = json.loads((out / "repvit_sam_encoder.json").read_text())
    assert info["files"]["onnx"]["status"] == "ok" and info["output"]["shape"] == [1, 256, SIZE // 16, SIZE // 16]
    assert "mean [123.675, 116.28, 103.53]" in info["input"]["preparation"]
    sidecar = json.loads((out / "repvit_sam_encoder.onnx.json").read_text())  # the file's own: SAM's, not ImageNet's
    assert sidecar["preprocessing"] == info["input"]["preparation"] and sidecar["output"]["shape"][1] == 256
    # the exported graph is the fused encoder: no BatchNorm left in it
    import onnx

    graph = onnx.load(str(out / "repvit_sam_encoder.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert [o.name for o in graph.output] == [info["files"]["onnx"]["output_name"]]


def test_fixed_shape_decoder_inputs_and_multi_input_litert(tmp_path):
    """LiteRT needs fixed shapes: its decoder's prompts are padded to a number of point slots with
    label -1 (the whole decoder's LiteRT parity is checked by ``repvit sam export``: ~30 s of
    conversion); the LiteRT backend feeds several inputs and returns every output, in order."""
    from repvit.export import export_litert, load_litert
    from repvit.sam.export import decoder_inputs

    embedding = torch.zeros(1, 256, 4, 4)
    inputs = decoder_inputs(embedding, [[10.0, 20.0], [30.0, 40.0]], [2, 3], slots=5)
    assert inputs[1].shape == (1, 5, 2) and inputs[2].tolist() == [[2.0, 3.0, -1.0, -1.0, -1.0]]
    assert inputs[3].shape == (1, 1, 16, 16) and inputs[4].tolist() == [0.0]  # no previous mask
    with pytest.raises(UserError, match="8 points does not fit the decoder's 7 point slots"):
        decoder_inputs(embedding, torch.zeros(8, 2), [1] * 8, slots=7)

    class TwoInTwoOut(torch.nn.Module):
        def forward(self, a, b):
            return a.sum(dim=1), a * b + 1  # different shapes: an order mix-up cannot pass

    a, b = torch.randn(2, 3), torch.randn(2, 3)
    export_litert(TwoInTwoOut(), (a, b), tmp_path / "two.tflite")
    run = load_litert(tmp_path / "two.tflite", threads=1, all_outputs=True)
    first, second = run(a, b)
    assert np.allclose(first, a.sum(dim=1).numpy(), atol=1e-6) and np.allclose(second, (a * b + 1).numpy(), atol=1e-6)


def test_sam_bench_measures_encoders_and_the_decoder_side_by_side(tmp_path, capsys):
    """A tiny run of ``repvit sam bench``: fused and unfused RepViT-SAM beside MobileSAM's encoder, the
    decoder per prompt, the ratios, the markdown table and the plot."""
    from repvit.tools import BenchReport

    out = tmp_path / "sam.json"
    assert main(["sam", "bench", "--models", "repvit_sam,repvit_sam@train,mobilesam", "--runtimes", "eager",
                 "--img-size", "64", "--rounds", "1", "--warmup", "0", "--json", str(out), "--markdown",
                 str(tmp_path / "sam.md"), "--plot", str(tmp_path / "sam.png"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "fused encoder vs unfused on eager:" in printed and "mobilesam / RepViT-SAM latency" in printed
    report = BenchReport.from_json(out)
    rows = {r["model"]: r for r in report.rows}
    assert set(rows) == {"repvit_sam", "repvit_sam@train", "mobilesam", "repvit_sam decoder"}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows.values())
    assert rows["repvit_sam"]["params_m"] < rows["repvit_sam@train"]["params_m"]  # fused: fewer weights
    assert 3.9 < rows["repvit_sam decoder"]["params_m"] < 4.1  # SAM's prompt encoder + mask decoder: 4.06M
    assert rows["repvit_sam"]["published_iphone12_ms"] == 48.9 and rows["mobilesam"]["published_m1pro_ms"] == 482.2
    assert set(report.env["ratios"]["fused_speedup"]) == {"eager"}
    table = (tmp_path / "sam.md").read_text()
    assert "| repvit_sam | 64 |" in table and "eager 1T ms" in table
    assert (tmp_path / "sam.png").stat().st_size > 10_000
