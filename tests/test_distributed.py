"""The same `repvit train` command under torchrun: 2 CPU processes (gloo) vs one process with the
same global batch. With frozen BatchNorm the two runs compute the same gradients, so their weights
and (distributed) evaluation must agree to float precision; with ordinary per-process BatchNorm
(the paper's setting) batch statistics differ, so only the outcome is compared."""

import json
import os
import subprocess
import sys

import pytest
import torch

from repvit.cli import main
from repvit.tools.timing import torch_threads

pytestmark = pytest.mark.distributed

COMMON = ["--config", "digits", "--model", "repvit_m0_6", "--scale", "1", "1", "--ratio", "1", "1",
          "--smoothing", "0", "--warmup-epochs", "0", "--seed", "0"]


def _run(args, output, processes: int, capsys=None):
    """`repvit train ARGS` under torchrun with ``processes`` processes, or (``processes`` 1) in this process
    through the same CLI entry point (no interpreter start-up and imports to pay again): the checkpoint."""
    if processes > 1:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        proc = subprocess.run(launcher + ["-m", "repvit", "train", *args, "--output", str(output)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stdout = proc.stdout
    else:
        capsys.readouterr()
        with torch_threads(1):  # as OMP_NUM_THREADS=1 does for each torchrun process
            assert main(["train", *args, "--output", str(output)]) == 0
        stdout = capsys.readouterr().out
    assert stdout.count("best val top-1") == 1  # one summary, from rank 0
    return torch.load(output / "checkpoint-last.pth", weights_only=True)


def test_two_processes_equal_one_with_the_same_global_batch(digits_subset, tmp_path, capsys):
    # 350 training images: 5 steps of 2 x 32 (one process: 64), the last 30 images dropped, as with all 1438
    args = COMMON + ["--data", str(digits_subset), "--epochs", "1", "--lr", "1e-3", "--freeze-bn"]
    ddp = _run(args + ["--batch-size", "32"], tmp_path / "ddp", processes=2)
    single = _run(args + ["--batch-size", "64"], tmp_path / "single", processes=1, capsys=capsys)
    assert ddp["recipe"]["batch_size"] == 32
    diff = sum(float((v - single["state_dict"][k]).pow(2).sum()) for k, v in ddp["state_dict"].items()
               if v.dtype.is_floating_point)
    scale = sum(float(v.pow(2).sum()) for v in single["state_dict"].values() if v.dtype.is_floating_point)
    assert (diff / scale) ** 0.5 < 1e-5
    a, b = ddp["history"][0], single["history"][0]
    assert a["val_n"] == b["val_n"] == 359  # sharded evaluation covers every image exactly once
    assert a["val_top1"] == b["val_top1"] and abs(a["val_loss"] - b["val_loss"]) < 1e-4
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-4


def test_per_process_batchnorm_matches_within_tolerance(digits_root, tmp_path, capsys):
    args = COMMON + ["--data", str(digits_root), "--epochs", "2", "--lr", "2e-3"]
    ddp = _run(args + ["--batch-size", "32"], tmp_path / "ddp", processes=2)
    single = _run(args + ["--batch-size", "64"], tmp_path / "single", processes=1, capsys=capsys)
    a, b = ddp["history"][-1], single["history"][-1]
    assert a["val_top1"] > 80 and b["val_top1"] > 80
    assert abs(a["val_top1"] - b["val_top1"]) < 3
    # the sharded evaluation measured exactly the saved model (rank 0's BatchNorm statistics)
    assert main(["val", "--model", "repvit_m0_6", "--weights", str(tmp_path / "ddp" / "checkpoint-last.pth"), "--data",
                 str(digits_root), "--img-size", "32", "--crop-pct", "1", "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["top1"] == pytest.approx(a["val_top1"])


def test_a_batch_of_unreadable_images_on_one_process_does_not_hang(tmp_path):
    # Corrupt exactly the images rank 0 draws first: it has nothing to train on in that step, the
    # other rank does; both must skip the step together instead of waiting for each other forever.
    from conftest import make_image_tree
    from torch.utils.data import DistributedSampler

    from repvit.data import SkippingImageFolder

    root = make_image_tree(tmp_path / "data", per_class=8)
    dataset = SkippingImageFolder(str(root / "train"))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=0, drop_last=True)
    sampler.set_epoch(0)
    for index in list(sampler)[:4]:
        with open(dataset.samples[index][0], "wb") as f:
            f.write(b"broken")
    ckpt = _run(["--config", "digits", "--model", "repvit_m0_6", "--data", str(root), "--epochs", "1",
                 "--batch-size", "4"], tmp_path / "ddp", processes=2)
    assert ckpt["history"][0]["unreadable_train_images"] == 4


def test_segmentation_under_torchrun_evaluates_every_image_once(tmp_path, capsys):
    # sharded evaluation summed over 2 processes == evaluating the same weights in one process (this one)
    from repvit.data import make_shapes_segmentation

    data = make_shapes_segmentation(tmp_path / "seg", n_train=8, n_val=5, size=64)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["segment", "train", "--model", "repvit_m0_6", "--data", str(data), "--num-classes", "4", "--crop-size",
            "64", "--scale", "96", "64", "--max-iters", "3", "--eval-interval", "3", "--batch-size", "2",
            "--fpn-channels", "16", "--head-channels", "16", "--workers", "0", "--output", str(out)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "repvit", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    distributed_miou = [h for h in state["history"] if "val_mIoU" in h][-1]["val_mIoU"]
    assert main(["segment", "val", "--weights", str(out / "checkpoint-last.pth"), "--unfused", "--json",
                 "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == pytest.approx(distributed_miou, abs=1e-6)
