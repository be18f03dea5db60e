"""Export to ONNX, ExecuTorch and Core ML with parity checks, and the failure messages."""

import json
import platform

import pytest
import torch
from conftest import settle_batchnorm

import repvit
from repvit import export as export_mod
from repvit.cli import main
from repvit.export import ExportError, export
from repvit.export import executorch as executorch_backend
from repvit.utils import extras

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return settle_batchnorm(repvit.create_model("repvit_m0_6", num_classes=10, distillation=True), img_size=64)


def test_export_all_formats_with_parity(small_model, tmp_path):
    results = {r.format: r for r in export(small_model, ["onnx", "executorch", "coreml"], img_size=64,
                                           batch=2, out_dir=tmp_path, dynamic_batch=True)}
    assert list(results) == ["onnx", "executorch", "coreml"]
    for fmt in ("onnx", "executorch"):
        r = results[fmt]
        assert r.status == "ok", r
        assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
        assert r.parity.startswith("ok") and r.size_mb > 5  # the weights are inside the file
    assert "nodes delegated to XNNPACK" in results["executorch"].detail
    coreml = results["coreml"]
    assert coreml.status == "ok" and "ML Program" in coreml.detail
    if platform.system() != "Darwin":
        assert coreml.parity.startswith("skipped: Core ML executes only on macOS")
    else:
        assert coreml.parity.startswith("ok")
    meta = json.loads((tmp_path / "repvit_m0_6.onnx.json").read_text())
    assert meta["reparameterized"] and meta["input"]["shape"] == [2, 3, 64, 64]
    assert meta["export"]["status"] == "ok" and meta["versions"]["onnxruntime"]


def test_litert_ncnn_openvino_with_parity(small_model, tmp_path):
    results = {r.format: r for r in export(small_model, ["tflite", "ncnn", "openvino"], img_size=64, batch=2,
                                           out_dir=tmp_path)}
    assert list(results) == ["litert", "ncnn", "openvino"]  # tflite is an alias
    for r in results.values():
        assert r.status == "ok", r
        assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4 and r.parity.startswith("ok")
        assert r.size_mb > 5  # fp32 weights inside (OpenVINO would compress to fp16 by default)
    # ncnn: fp32 is the parity, fp16 storage (ncnn's default on CPUs with it) is reported beside it
    assert "fp16 storage (ncnn's default): max abs diff" in results["ncnn"].parity
    assert sorted(p.name for p in (tmp_path / "repvit_m0_6_ncnn").iterdir()) == ["model.ncnn.bin", "model.ncnn.param"]
    assert sorted(p.name for p in (tmp_path / "repvit_m0_6_openvino").iterdir()) == ["model.bin", "model.xml"]
    meta = json.loads((tmp_path / "repvit_m0_6_ncnn.json").read_text())
    assert meta["input"] == {"name": "in0", "shape": [3, 64, 64], "layout": "CHW", "dtype": "float32"}
    assert meta["versions"]["ncnn"] and meta["versions"]["pnnx"]
    assert json.loads((tmp_path / "repvit_m0_6_openvino.json").read_text())["input"]["name"] == "image"
    # OpenVINO's usage telemetry (network) is replaced by its own no-op stub
    from openvino.tools.ovc import telemetry_utils

    assert telemetry_utils.tm.__name__.endswith("telemetry_stub")


def test_ncnn_input_must_be_owned_and_fp32_is_exact(small_model, tmp_path):
    # images run one at a time; a batch must give the same answers as separate calls
    export(small_model, "ncnn", img_size=64, out_dir=tmp_path)
    run = export_mod.load_ncnn(tmp_path / "repvit_m0_6_ncnn", threads=1)
    x = torch.randn(3, 3, 64, 64)
    batch = run(x)
    singles = [run(x[i:i + 1].clone())[0] for i in range(3)]
    with torch.no_grad():
        expected = repvit.reparameterize(small_model)(x)
    assert (torch.from_numpy(batch) - expected).abs().max() <= 1e-4
    assert all((torch.from_numpy(s) - e).abs().max() <= 1e-4 for s, e in zip(singles, expected))
    # inputs that need converting first (a temporary array ncnn must not outlive)
    for other in (x.contiguous(memory_format=torch.channels_last), x.double(), x.transpose(2, 3).transpose(2, 3)):
        assert (torch.from_numpy(run(other)) - expected).abs().max() <= 1e-4


def test_onnx_dynamic_batch_runs_other_batch_sizes(small_model, tmp_path):
    export(small_model, "onnx", img_size=64, batch=2, out_dir=tmp_path, dynamic_batch=True)
    run = export_mod.load_onnx(tmp_path / "repvit_m0_6.onnx", threads=1)
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        expected = repvit.reparameterize(small_model)(x)
    assert (torch.from_numpy(run(x)) - expected).abs().max() <= 1e-4


def test_exported_model_is_the_reparameterized_one(small_model, tmp_path):
    # the training model has BatchNorm; the exported graph must not
    import onnx

    export(small_model, "onnx", img_size=64, out_dir=tmp_path)
    ops = {n.op_type for n in onnx.load(tmp_path / "repvit_m0_6.onnx").graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops and "Gelu" in ops
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in small_model.modules())  # untouched


def test_coreml_image_input(small_model, tmp_path):
    (result,) = export(small_model, ["coreml"], img_size=64, out_dir=tmp_path, image_input=True)
    assert result.status == "ok" and "normalisation built in" in result.detail
    import coremltools as ct

    spec = ct.utils.load_spec(str(tmp_path / "repvit_m0_6.mlpackage"))
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"


def test_unknown_format_and_bad_options():
    with pytest.raises(ExportError, match="unknown export format tensorrt; choose from onnx, executorch, coreml, "
                                          "litert, ncnn, openvino"):
        export("repvit_m0_6", ["onnx", "tensorrt"])
    with pytest.raises(ExportError, match="img_size must be >= 32"):
        export("repvit_m0_6", "onnx", img_size=16)
    with pytest.raises(ValueError, match="unknown model"):
        export("repvit_m0_7", "onnx")


def test_missing_package_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setattr(extras, "missing_modules", lambda modules: ["onnxruntime"] if "onnxruntime" in modules else [])
    (result,) = export("repvit_m0_6", ["onnx"], img_size=64, out_dir=tmp_path)
    assert result.status == "unavailable" and "pip install 'repvit-toolkit[export]'" in result.detail
    monkeypatch.setattr(extras, "missing_modules", lambda modules: list(modules))
    rows = export("repvit_m0_6", ["litert", "ncnn", "openvino"], img_size=64, out_dir=tmp_path)
    assert [r.detail for r in rows] == [
        "missing package litert_torch, ai_edge_litert: pip install 'repvit-toolkit[litert]'",
        "missing package pnnx, ncnn: pip install 'repvit-toolkit[ncnn]'",
        "missing package openvino: pip install 'repvit-toolkit[openvino]'"]


class _DataDependent(torch.nn.Module):
    name = "data_dependent"

    def forward(self, x):
        if x.sum() > 0:  # control flow on values: torch.export cannot capture it
            return x * 2
        return x


def test_a_model_that_cannot_be_exported_gets_a_one_line_reason(tmp_path):
    (result,) = export(_DataDependent(), ["executorch"], img_size=32, out_dir=tmp_path)
    assert result.status == "export failed" and "\n" not in result.detail and result.detail


def test_executorch_threadpool_cannot_change_after_loading(monkeypatch):
    monkeypatch.setattr(executorch_backend, "_ET_LOADED", True)
    monkeypatch.setattr(executorch_backend, "_ET_THREADS", 2)
    with pytest.raises(ExportError, match="after a program was loaded"):
        export_mod.set_executorch_threads(3)


def test_cli_export(tmp_path, capsys):
    rc = main(["export", "repvit_m0_6", "--format", "onnx", "--img-size", "64", "--out", str(tmp_path), "--json"])
    assert rc == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["format"] == "onnx" and row["status"] == "ok" and (tmp_path / "repvit_m0_6.onnx").is_file()
    assert main(["export", "repvit_m0_6", "--format", "tensorrt"]) == 2
    assert "unknown export format tensorrt" in capsys.readouterr().err
