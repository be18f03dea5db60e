"""The quickstart (what `make demo` runs), shortened to one epoch of the smallest model."""

import json

import pytest

from repvit.cli import main

pytestmark = pytest.mark.train


def test_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--model", "repvit_m0_6", "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "identical predictions" in printed and "report:" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_structure"] == summary["deployed"]
    assert summary["prediction_agreement"] == 100.0 and summary["max_abs_logit_diff"] < 1e-3
    for fmt in ("onnx", "executorch"):
        runtime = summary["runtimes"][fmt]
        assert runtime["status"] == "ok" and runtime["agreement"] == 100.0
        assert runtime["top1"] == pytest.approx(summary["deployed"]["top1"])
    report = (out / "report.md").read_text()
    assert "reparameterized (deployed)" in report and "curves.png" in report
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "data" / "train" / "9").is_dir() and len(list((out / "data" / "val").rglob("*.png"))) == 359
