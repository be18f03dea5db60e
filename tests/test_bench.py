"""The latency benchmark: every field, interleaving, skipped runtimes, the plot, the CLI."""

import json
import subprocess
import sys

import pytest
import torch

from repvit.tools import BenchReport, plot_pareto, resolve_models, run_bench, run_throughput
from repvit.utils import extras

pytestmark = pytest.mark.bench

ROW_FIELDS = {"model", "family", "structure", "runtime", "status", "reason", "threads", "batch", "img_size",
              "median_ms", "p10_ms", "p90_ms", "iqr_ms", "mean_ms", "std_ms", "spread_pct", "n", "params_m", "gmacs",
              "gmacs_per_s", "parity_max_abs_diff", "parity_rel_diff", "prepare_s", "published_top1",
              "published_recipe", "published_iphone12_ms", "published_source"}


def test_resolve_models():
    names = [t.name for t in resolve_models("repvit_m1_*,timm:repvit_m0_9,mobileone_s1")]
    assert names == ["repvit_m1_0", "repvit_m1_1", "repvit_m1_5", "timm:repvit_m0_9", "mobileone_s1"]
    targets = resolve_models("repvit_m0_9", train_structure=True)
    assert [(t.name, t.structure) for t in targets] == [("repvit_m0_9", "deployed"), ("repvit_m0_9@train", "train")]
    everything = resolve_models("all")
    assert {t.family for t in everything} == {"repvit", "peer"} and len(everything) >= 9 + 15
    peers = {t.name: t for t in everything if t.family == "peer"}
    for required in ("mobilenetv3_large_100", "efficientformerv2_s0", "efficientformerv2_s1", "efficientformerv2_s2",
                     "mobileone_s0", "mobileone_s4", "fastvit_t8", "fastvit_t12", "fastvit_s12", "mobilevitv2_100"):
        assert required in peers
    assert peers["fastvit_t8"].published["top1"] == 76.7 and "Table 1" in peers["fastvit_t8"].published["source"]
    with pytest.raises(ValueError, match="unknown model 'mobilone_s1'.*Did you mean 'mobileone_s1'"):
        resolve_models("mobilone_s1")
    with pytest.raises(ValueError, match="suffix"):
        resolve_models("repvit_m0_9@fused")


def test_bench_two_models_two_runtimes(tmp_path):
    report = run_bench("repvit_m0_6,mobileone_s0", ["eager", "onnxruntime"], img_size=64, warmup=1, rounds=3,
                       iters=2, train_structure=True, progress=False)
    assert len(report.rows) == 3 * 2
    for row in report.rows:
        assert set(row) == ROW_FIELDS
        assert row["status"] == "ok", row
        assert row["n"] == 3 * 2 and 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["parity_rel_diff"] <= 1e-4 and row["params_m"] > 1 and row["gmacs"] > 0
        assert row["threads"] == 1 and row["batch"] == 1 and row["img_size"] == 64
    m06 = report.row("repvit_m0_6", "eager")
    assert m06["published_top1"] == 74.1 and m06["published_iphone12_ms"] == 0.6
    assert report.row("repvit_m0_6@train", "eager")["params_m"] > m06["params_m"]
    assert {"cpu", "cpu_count", "versions", "threads", "rounds", "date"} <= set(report.env)
    assert torch.get_num_threads() >= 1  # restored
    report.to_json(tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["rows"] == json.loads(json.dumps(report.rows))
    assert BenchReport.from_json(tmp_path / "b.json").rows == data["rows"]
    markdown = report.to_markdown()
    assert "| model | params M | GMACs | eager ms | onnxruntime ms |" in markdown
    assert markdown.count("| repvit_m0_6") == 2 and "74.1 (dist)" in markdown  # deployed and @train lines
    report.to_csv(tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_text().splitlines()[0].startswith("model,family,structure,runtime")
    png = plot_pareto(report, tmp_path / "pareto.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_unavailable_runtime_is_a_skipped_row(monkeypatch):
    monkeypatch.setattr(extras, "missing_modules", lambda modules: list(modules))
    report = run_bench("repvit_m0_6", ["eager", "onnxruntime"], img_size=64, warmup=0, rounds=1, iters=1, progress=False)
    assert report.row("repvit_m0_6", "eager")["status"] == "ok"
    skipped = report.row("repvit_m0_6", "onnxruntime")
    assert skipped["status"] == "skipped" and "missing package onnx" in skipped["reason"]
    assert skipped["reason"].endswith("pip install 'repvit-toolkit[export]'")


def test_more_runtimes_and_int8_twins():
    report = run_bench("repvit_m0_6", ["litert", "ncnn", "openvino", "onnxruntime"], int8=True, img_size=32, warmup=1,
                       rounds=2, iters=2, progress=False)
    assert [r["runtime"] for r in report.rows] == ["litert", "ncnn", "openvino", "onnxruntime", "onnxruntime_int8"]
    for row in report.rows:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["n"] == 4
    for runtime in ("litert", "ncnn", "openvino", "onnxruntime"):
        assert report.row("repvit_m0_6", runtime)["parity_rel_diff"] <= 1e-4
    quantized = report.row("repvit_m0_6", "onnxruntime_int8")["parity_rel_diff"]
    assert 1e-5 < quantized < 0.2  # really int8, still the same function
    assert "random inputs" in report.env["int8_calibration"]
    assert {"ai-edge-litert", "ncnn", "openvino"} <= set(report.env["versions"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown runtime tensorrt"):
        run_bench("repvit_m0_6", "eager,tensorrt")
    with pytest.raises(ValueError, match="threads, batch, rounds and iters must be >= 1"):
        run_bench("repvit_m0_6", "eager", threads=0)


def test_throughput_path_runs_on_cpu(monkeypatch):
    report = run_throughput("repvit_m0_6", device="cpu", batch=2, img_size=64, seconds=0.2, warmup=1, progress=False)
    (row,) = report.rows
    assert row["status"] == "ok" and row["throughput_ips"] > 0 and row["runtime"] == "eager-cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_throughput("repvit_m0_6", device="cuda")


def test_cli_bench_with_executorch_in_a_fresh_process(tmp_path):
    # ExecuTorch's threadpool is per process: the CLI runs the way a user runs it.
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "repvit", "bench", "--models", "repvit_m0_6,timm:repvit_m0_9", "--runtimes",
         "eager,executorch", "--img-size", "64", "--warmup", "1", "--rounds", "2", "--iters", "2", "--peak",
         "--json", str(out), "--plot", str(tmp_path / "p.png"), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [(r["model"], r["runtime"], r["status"]) for r in data["rows"]] == [
        ("repvit_m0_6", "eager", "ok"), ("repvit_m0_6", "executorch", "ok"),
        ("timm:repvit_m0_9", "eager", "ok"), ("timm:repvit_m0_9", "executorch", "ok")]
    rates = data["env"]["matmul_gflops_1thread"]
    assert rates["peak"] == max(v for k, v in rates.items() if k != "peak") and rates["xnnpack"] > 0
    assert "median ms" in proc.stdout and "single-thread fp32 1024^3 matmul" in proc.stdout
    assert (tmp_path / "p.png").is_file()
