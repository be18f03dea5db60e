"""The run folder stays true through crashes, reruns, moves, full disks and Ctrl-C (both loops, QAT in
test_quantize), and the smaller failure modes each give one line."""

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_image_tree

import repvit
from repvit.cli import main
from repvit.data import DatasetError, make_shapes_coco, make_shapes_segmentation
from repvit.dense import CocoDataset, SegmentRecipe, train_segmenter
from repvit.train import RunFolderError, load_recipe, train
from repvit.train.run_folder import RunFolder, holds_run_of
from repvit.weights import atomic_write
from repvit.weights.files import read_safetensors

pytestmark = pytest.mark.train

TINY = dict(config="digits", model="repvit_m0_6", img_size=32, batch_size=4, workers=0)
LAST, BEST, DEPLOYED = "checkpoint-last.pth", "checkpoint-best.pth", "model-best-deployed.safetensors"

# Runs the CLI in a real process that SIGKILLs itself (or sends itself Ctrl-C) right before writing the
# best checkpoint of a given epoch/iteration; every evaluation is made a new best so that this write happens.
DRIVER = """
import os, signal, sys
import repvit.dense.loop as dense_loop
import repvit.dense.segmentation as segmentation
import repvit.train.epoch as epoch
from repvit.cli import main

action, target = sys.argv[1], int(sys.argv[2])
scores = [0.0]

def improving(real, key):
    def evaluate(*args, **kwargs):
        metrics = real(*args, **kwargs)
        scores[0] += 10.0
        metrics[key] = scores[0]
        return metrics
    return evaluate

epoch.evaluate = improving(epoch.evaluate, "top1")
segmentation.SegmentationTask.evaluate = improving(segmentation.SegmentationTask.evaluate, "mIoU")

def saving(real):
    def atomic_save(state, path):
        if path.name == "checkpoint-best.pth" and state.get("epoch", state.get("iter")) == target:
            os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGINT)
        return real(state, path)
    return atomic_save

epoch.atomic_save = saving(epoch.atomic_save)
dense_loop.atomic_save = saving(dense_loop.atomic_save)
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_image_tree(tmp_path_factory.mktemp("tiny") / "data", per_class=4, size=32)


def _train_args(data, output, *extra):
    args = ["train", "--data", str(data), "--output", str(output)]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + list(extra)


def _run_driver(tmp_path, action, target, args, **kwargs):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), action, str(target), *args], capture_output=True, text=True,
                          env=env, timeout=300, **kwargs)


def _error_line(stderr):
    """The one line a failing command ends with (log lines may come before it; no traceback)."""
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("repvit ") and ": error: " in line
    return line


def _epoch_of(path):
    return torch.load(path, weights_only=True)["epoch"]


def _assert_clean(folder):
    """No temporary file and no lock left; every file has the usual mode (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(".tmp") or n == ".lock"], names
    for path in folder.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def _assert_best_files_agree(folder):
    """checkpoint-best.pth and the deployed best hold the best epoch that checkpoint-last.pth and
    metrics.jsonl record, and the deployed file is that checkpoint reparameterized."""
    last = torch.load(folder / LAST, weights_only=True)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [h["epoch"] for h in last["history"]]
    best = last["best"]
    assert max(r["val_top1"] for r in records) == best["top1"]
    best_state = torch.load(folder / BEST, weights_only=True)
    assert best_state["epoch"] + 1 == best["epoch"]
    tensors, metadata = read_safetensors(folder / DEPLOYED)
    assert int(metadata["epoch"]) == best["epoch"] and float(metadata["val_top1"]) == best["top1"]
    model = repvit.create_model("repvit_m0_6", num_classes=3)
    model.load_state_dict(best_state["state_dict"])
    expected = repvit.reparameterize(model).state_dict()
    for key, value in tensors.items():
        assert torch.allclose(value, expected[key], atol=1e-6), key


# ---- 1. a kill between checkpoint-last and checkpoint-best


def test_kill_between_last_and_best_is_repaired_on_resume(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    killed = _run_driver(tmp_path, "kill", 1, _train_args(tiny_data, out, "--epochs", "2"))
    assert killed.returncode == -signal.SIGKILL
    assert _epoch_of(out / LAST) == 1 and _epoch_of(out / BEST) == 0  # last records epoch 2 as the best
    assert torch.load(out / LAST, weights_only=True)["best"]["epoch"] == 2
    assert (out / ".lock").exists()  # a killed run leaves its lock (stale, taken over below)
    capsys.readouterr()
    assert main(["train", "--resume", str(out / LAST)]) == 0  # resumed here: another process than the killed one
    stderr = capsys.readouterr().err
    assert "repaired: checkpoint-best.pth held epoch 1" in stderr and "rebuilt from checkpoint-last.pth" in stderr
    assert "took over the lock of a run that has ended" in stderr
    _assert_best_files_agree(out)
    _assert_clean(out)


def test_segmentation_kill_between_last_and_best_is_repaired(tmp_path):
    data = make_shapes_segmentation(tmp_path / "seg", n_train=4, n_val=2, size=64)
    out = tmp_path / "run"
    args = ["segment", "train", "--data", str(data), "--output", str(out), "--model", "repvit_m0_6", "--num-classes",
            "4", "--crop-size", "64", "--scale", "96", "64", "--batch-size", "2", "--workers", "0", "--max-iters", "4",
            "--eval-interval", "2", "--log-interval", "2", "--fpn-channels", "16", "--head-channels", "16"]
    killed = _run_driver(tmp_path, "kill", 4, args)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(out / BEST, weights_only=True)["iter"] == 2
    assert main(["segment", "train", "--resume", str(out)]) == 0  # a run folder works as --resume too
    last = torch.load(out / LAST, weights_only=True)
    assert last["iter"] == 4 and last["best"]["iter"] == 4
    assert torch.load(out / BEST, weights_only=True)["iter"] == 4
    assert torch.load(out / "model-best-deployed.pth", weights_only=True)["iter"] == 4
    _assert_clean(out)


# ---- 2. --resume continues in the checkpoint's folder, wherever it is


def test_resume_continues_in_the_checkpoint_folder_from_anywhere(tiny_data, tmp_path, monkeypatch, capsys):
    original = tmp_path / "original"
    train(load_recipe(**{**TINY, "data": str(tiny_data), "output": str(original), "epochs": 2,
                         "stop_after_epochs": 1}))
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(original, copy)
    before = {name: (original / name).read_bytes() for name in ("recipe.yaml", "metrics.jsonl", LAST)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(copy / LAST), "--output", "somewhere"]) == 2
    assert "continues the run in its own folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(copy / LAST)]) == 0
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2 and _epoch_of(copy / LAST) == 1
    assert {name: (original / name).read_bytes() for name in before} == before  # the original is untouched
    assert list(elsewhere.iterdir()) == []  # nothing written where the command ran
    assert Path(yaml.safe_load((copy / "recipe.yaml").read_text())["output"]) == copy.resolve()


# ---- 3. a new run never replaces a run silently


def test_a_new_run_refuses_a_folder_holding_a_run(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(tiny_data, out, "--epochs", "1")) == 0
    metrics = (out / "metrics.jsonl").read_bytes()
    stamp = (out / LAST).stat().st_mtime_ns
    capsys.readouterr()
    assert main(_train_args(tiny_data, out, "--epochs", "1")) == 2
    err = _error_line(capsys.readouterr().err)
    assert "holds a run already" in err and "--resume auto" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_bytes() == metrics and (out / LAST).stat().st_mtime_ns == stamp
    # --overwrite replaces it: files of the old run that the new one does not write are gone too
    (out / DEPLOYED).write_bytes(b"old")
    assert main(_train_args(tiny_data, out, "--epochs", "1", "--overwrite", "--stop-after-epochs", "1")) == 0
    assert read_safetensors(out / DEPLOYED)[1]["epoch"] == "1"
    assert main(_train_args(tiny_data, out, "--resume", "auto", "--overwrite")) == 2
    assert "give one of them" in capsys.readouterr().err
    # the saved recipe never carries the keys of one invocation: --config recipe.yaml cannot delete a run
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert not {"overwrite", "resume", "stop_after_epochs"} & set(saved)
    # what quickstart and roadmap ask before replacing a folder: is it a run of theirs?
    assert holds_run_of(out, data=str(tiny_data.resolve()), model="repvit_m0_6")
    assert not holds_run_of(out, data=str(tmp_path)) and not holds_run_of(tmp_path / "none", model="repvit_m0_6")


def test_resuming_an_older_checkpoint_in_place_is_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(tiny_data, out, "--epochs", "2", "--stop-after-epochs", "1")) == 0
    shutil.copy(out / LAST, out / "after-epoch-1.pth")
    assert main(["train", "--resume", str(out / LAST)]) == 0
    before = (out / LAST).read_bytes()
    assert main(["train", "--resume", str(out / "after-epoch-1.pth")]) == 2
    assert "would replace the run's later checkpoint-last.pth (2 vs 1)" in _error_line(capsys.readouterr().err)
    assert (out / LAST).read_bytes() == before


# ---- 4. one run per folder; unique temporary names


def test_a_second_run_in_a_locked_folder_is_refused_and_a_stale_lock_taken_over(tiny_data, tmp_path, capsys, caplog,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom repvit.train.run_folder import RunFolder\n"
                               f"RunFolder({str(out)!r}, 'test').open(None, False)\nprint('locked', flush=True)\n"
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_train_args(tiny_data, out, "--epochs", "1")) == 2
        assert f"in use by another run (PID {holder.pid} on" in _error_line(capsys.readouterr().err)
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").is_file()  # SIGKILL: the lock file stays, its OS lock is gone
    monkeypatch.setattr(logging.getLogger("repvit"), "propagate", True)  # the CLI turns it off
    with caplog.at_level(logging.INFO, logger="repvit"):
        train(load_recipe(**{**TINY, "data": str(tiny_data), "output": str(out), "epochs": 1}))
    assert f"took over the lock of a run that has ended (PID {holder.pid}" in caplog.text
    _assert_clean(out)


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    target, errors = tmp_path / "f.bin", []

    def write(payload):
        try:
            for _ in range(50):
                atomic_write(target, lambda tmp: tmp.write_bytes(payload))
        except Exception as err:  # noqa: BLE001  (any failure is the test's failure)
            errors.append(err)

    threads = [threading.Thread(target=write, args=(bytes([i]) * 4096,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(target.read_bytes())) == 1 and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# ---- 5. no readable training image


def test_a_train_split_of_unreadable_images_stops_with_one_line(tmp_path, capsys):
    data = make_image_tree(tmp_path / "data", per_class=4, size=32)
    for image in (data / "train").rglob("*.png"):
        image.write_bytes(b"not an image")
    out = tmp_path / "run"
    assert main(_train_args(data, out, "--epochs", "1")) == 2
    assert "no training image could be used in epoch 1: 12 unreadable" in _error_line(capsys.readouterr().err)
    assert not (out / LAST).exists() and not (out / BEST).exists()


# ---- 6. a full disk


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    # A 75 MB tmpfs (in a user namespace: no root needed) holds epoch 1's checkpoint-last (26.5 MB),
    # checkpoint-best (26.5 MB) and deployed best (8.6 MB), but not a second checkpoint-last beside them.
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode:  # e.g. a container that forbids user namespaces: there is no small disk to fill
        pytest.skip(f"no user namespaces here to mount a small tmpfs: {probe.stderr.decode().strip()}")
    out, report = tmp_path / "disk", tmp_path / "report"
    out.mkdir()
    args = " ".join(_train_args(tiny_data, out, "--epochs", "3"))
    script = (f"mount -t tmpfs -o size=75m tmpfs {out} && {sys.executable} -m repvit.cli {args} 2> {report}.err; "
              f"echo $? > {report}.rc; ls -a {out} > {report}.ls; "
              f"{sys.executable} -c \"import torch; print(torch.load('{out / LAST}', weights_only=True)['epoch'])\" "
              f"> {report}.epoch")
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], check=True, timeout=300)
    assert Path(f"{report}.rc").read_text().strip() == "2"
    last_line = _error_line(Path(f"{report}.err").read_text())
    assert "the disk is full" in last_line
    assert "the previous checkpoint-last.pth is kept; free some space, then continue with `repvit train --resume" \
        in last_line
    files = Path(f"{report}.ls").read_text().split()
    assert not [f for f in files if f.endswith(".tmp")] and ".lock" not in files
    assert Path(f"{report}.epoch").read_text().strip() == "0"  # epoch 1's checkpoint survives


# ---- 7. Ctrl-C


def test_ctrl_c_exits_130_with_how_to_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "repvit.cli", *_train_args(tiny_data, out, "--epochs", "50")],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / LAST).is_file():  # Ctrl-C once a checkpoint exists, whatever the run is doing then
        if time.time() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"no checkpoint after 120 s: {process.communicate()[1][-2000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("repvit train: stopped by Ctrl-C; ") and "holds the run up to epoch" in last_line
    assert f"continue with `repvit train --resume {out.resolve() / LAST}`" in last_line
    _assert_clean(out)


def test_ctrl_c_while_writing_waits_for_the_best_files(tiny_data, tmp_path):
    out = tmp_path / "run"
    interrupted = _run_driver(tmp_path, "ctrl-c", 0, _train_args(tiny_data, out, "--epochs", "3"))
    assert interrupted.returncode == 130, interrupted.stderr
    assert "holds the run up to epoch 1 of 3" in interrupted.stderr.strip().splitlines()[-1]
    _assert_best_files_agree(out)  # the interrupt came before checkpoint-best: it was still written, whole
    _assert_clean(out)


# ---- 8. bad detection boxes


def _coco_with(tmp_path, change):
    root = make_shapes_coco(tmp_path / "coco", n_train=4, n_val=2, size=64)
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    change(data["annotations"][1])
    path.write_text(json.dumps(data))
    return root, path, data["annotations"][1]["id"]


@pytest.mark.parametrize("bbox, message", [
    ([float("nan"), 1, 5, 5], "is not finite"),
    ([1, 1, -4, 5], "has a negative width or height"),
    ([50, 50, 40, 40], "lies outside its 64x64 image"),
])
def test_bad_boxes_name_the_file_and_annotation(tmp_path, bbox, message, capsys):
    root, path, ann_id = _coco_with(tmp_path, lambda ann: ann.update(bbox=bbox))
    with pytest.raises(DatasetError, match=f"instances_train2017.json: annotation {ann_id} .*{message}"):
        CocoDataset(root / "train2017", path, train=True, masks=False)
    args = ["detect", "train", "--data", str(root), "--output", str(tmp_path / "run"), "--workers", "0"]
    assert main(args) == 2
    err = _error_line(capsys.readouterr().err)
    assert f"annotation {ann_id}" in err and message in err


def test_degenerate_boxes_are_dropped_with_a_count(tmp_path, caplog):
    root, path, ann_id = _coco_with(tmp_path, lambda ann: ann.update(bbox=[3, 3, 0.5, 9]))
    with caplog.at_level(logging.WARNING, logger="repvit"):
        dataset = CocoDataset(root / "train2017", path, train=True, masks=False)
    assert f"dropped 1 degenerate box(es) (under 1 px wide or high), e.g. annotation {ann_id}" in caplog.text
    kept = sum(len(objects) for objects in dataset.per_image.values())
    assert kept == len(json.loads(path.read_text())["annotations"]) - 1


# ---- 9. smaller ones


def _deployed_weights(tmp_path):
    torch.manual_seed(0)
    model = repvit.create_model("repvit_m0_6", num_classes=3)
    return repvit.save_weights(repvit.reparameterize(model.eval()), tmp_path / "deployed.safetensors",
                               class_names=["cat", "dog", "owl"])


def test_predict_on_a_folder_and_val_of_a_deployed_checkpoint(tiny_data, tmp_path, capsys):
    weights = _deployed_weights(tmp_path)
    assert main(["predict", str(tiny_data / "val" / "cat"), "--model", "repvit_m0_6", "--weights", str(weights),
                 "--img-size", "32", "--json"]) == 0
    assert [Path(r["image"]).name for r in json.loads(capsys.readouterr().out)] == [f"{i}.png" for i in range(4)]
    assert main(["predict", str(tmp_path / "nothing"), "--model", "repvit_m0_6", "--weights", str(weights)]) == 2
    assert "no such image file or folder" in capsys.readouterr().err
    args = ["val", "--model", "repvit_m0_6", "--weights", str(weights), "--data", str(tiny_data), "--img-size", "32",
            "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "deployed (reparameterized)" in out and "training" not in out.replace("no training structure", "")
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train"] is None and result["n"] == 12


def test_fine_tuning_a_deployed_checkpoint_hints_without_python_only_arguments(tiny_data, tmp_path, capsys):
    weights = _deployed_weights(tmp_path)
    assert main(_train_args(tiny_data, tmp_path / "run", "--epochs", "1", "--finetune", str(weights))) == 2
    err = _error_line(capsys.readouterr().err)
    assert "start from a training checkpoint" in err and "deploy=True" not in err


def test_a_resume_error_is_whole(tmp_path, capsys):
    data = make_shapes_segmentation(tmp_path / "seg", n_train=2, n_val=1, size=64)
    recipe = dict(model="repvit_m0_6", num_classes=4, crop_size=64, scale=(96, 64), batch_size=2, workers=0,
                  max_iters=1, fpn_channels=16, head_channels=16, data=str(data), output=str(tmp_path / "run"))
    train_segmenter(SegmentRecipe.load(None, **recipe))
    assert main(["segment", "train", "--resume", str(tmp_path / "run" / LAST), "--head-channels", "8",
                 "--max-iters", "2"]) == 2
    err = _error_line(capsys.readouterr().err)
    assert "the checkpoint's model differs from this run's: tensor 'scale_heads." in err
    assert err.endswith("in the checkpoint, the model expects (8, 16, 3, 3)")


def test_a_pickle_that_runs_code_is_named_as_such(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, ("true",)

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(repvit.weights.CheckpointError, match=r"asks to run code \(posix.system\) while loading"):
        repvit.read_checkpoint(path)


def test_the_console_shows_unreadable_val_images_and_resume_positions(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("repvit"), "propagate", True)
    data = make_image_tree(tmp_path / "data", per_class=4, size=32)
    (data / "val" / "owl" / "cut.png").write_bytes(b"broken")
    common = {**TINY, "data": str(data), "output": str(tmp_path / "run"), "epochs": 3}
    with caplog.at_level(logging.INFO, logger="repvit"):
        train(load_recipe(**common, stop_after_epochs=2))
        caplog.clear()
        train(load_recipe(**common, resume="auto"))
    assert "1 unreadable val image(s) skipped" in caplog.text
    lines = caplog.messages
    resumed = next(i for i, line in enumerate(lines) if line.startswith("resumed"))
    assert "2 of 3 epochs done" in lines[resumed]
    # (a record may be captured twice when another test added the CLI's handler in this process)
    assert {line.split()[1] for line in lines[resumed:] if line.startswith("epoch ")} == {"3/3"}


def test_run_folder_errors_are_user_errors():
    assert issubclass(RunFolderError, ValueError)
    folder = RunFolder("unused", "repvit train")
    assert "the main process of the run says how to resume" in str(folder.interrupted(KeyboardInterrupt()))
    folder.writer = True
    assert "before the first checkpoint: nothing to resume" in str(folder.interrupted(KeyboardInterrupt()))
