"""Hub folders in timm's format: a trained model saved with save_pretrained (and with `repvit export
--format timm`) loads in plain timm, from a local folder and offline from the Hub cache, in a process
where repvit cannot be imported, with the same logits; the card, the config, the refusals, and
push-to-hub against a stubbed Hub."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import sample_image_tree
from hub_cache import populate_hf_cache
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants

import repvit
from repvit.cli import main
from repvit.train import load_recipe, train
from repvit.train.pretrained import HUB_FILES, REPO_PLACEHOLDER
from repvit.utils import UserError
from repvit.weights import CheckpointError, convert_state_dict, to_timm

CLASSES = tuple(str(digit) for digit in range(10))  # the embedded digits' class folders
REPO = "someone/repvit-m0_9-pets"

# Runs with repvit blocked: what a user with only timm installed does.
CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["repvit"] = None  # any import of repvit now fails
    try:
        import repvit
    except ImportError:
        pass
    else:
        raise SystemExit("repvit is importable")
    import timm, torch
    x = torch.load(sys.argv[1])
    out = {}
    for name in sys.argv[2:]:
        model = timm.create_model(name, pretrained=True).eval()
        with torch.no_grad():
            logits = model(x)
        out[name] = {"logits": logits.tolist(), "labels": model.pretrained_cfg.get("label_names"),
                     "input_size": list(model.pretrained_cfg["input_size"]), "class": type(model).__name__}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny inputs: one thread is as fast, and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(digits_root, tmp_path_factory):
    """A real `repvit train` run of repvit_m0_9 with the digits recipe on the embedded digits (1 epoch on
    3 images per class, evaluated on 2: a few seconds; timm has no M0.6, the quickstart's model)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    data = sample_image_tree(digits_root, tmp / "digits", {"train": 3, "val": 2})
    assert tuple(sorted(p.name for p in (data / "train").iterdir())) == CLASSES
    result = train(load_recipe("digits", model="repvit_m0_9", data=str(data), output=str(tmp / "run"), epochs=1,
                               batch_size=10, img_size=32))
    return SimpleNamespace(tmp=tmp, result=result, best=result.checkpoint_best)


@pytest.fixture(scope="module")
def saved(run):
    """The run's best checkpoint saved twice (API and CLI), and what plain timm makes of both, and
    of the Hub copy, in one child process."""
    api_dir = repvit.save_pretrained("repvit_m0_9", run.tmp / "api", weights=run.best)
    cli_dir = run.tmp / "cli"
    assert main(["export", "repvit_m0_9", "--weights", str(run.best), "--format", "timm", "--out", str(cli_dir),
                 "--latency", "Pixel 8, ExecuTorch XNNPACK=1.9"]) == 0
    model = repvit.create_model("repvit_m0_9", weights=run.best).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, run.tmp / "x.pt")
    with torch.no_grad():
        expected = model(x)
    cache = run.tmp / "hf-cache"
    populate_hf_cache(cache, REPO, {name: api_dir / name for name in HUB_FILES})
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(run.tmp),
           "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(run.tmp / "x.pt"), f"local-dir:{api_dir}",
                            f"local-dir:{cli_dir}", f"hf-hub:{REPO}"],
                           capture_output=True, text=True, env=env, cwd=run.tmp, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    return SimpleNamespace(api=api_dir, cli=cli_dir, expected=expected, timm=json.loads(child.stdout.splitlines()[-1]))


def test_plain_timm_loads_the_folders_with_the_same_logits(saved):
    assert len(saved.timm) == 3  # local-dir (API), local-dir (CLI), hf-hub from the offline cache
    for name, result in saved.timm.items():
        assert result["class"] == "RepVit", name
        assert torch.allclose(torch.tensor(result["logits"]), saved.expected, atol=1e-5), name
        assert result["labels"] == list(CLASSES) and result["input_size"] == [3, 32, 32], name


def test_config_is_timms(saved):
    config = json.loads((saved.api / "config.json").read_text())
    assert config["architecture"] == "repvit_m0_9" and config["num_classes"] == len(CLASSES)
    assert config["label_names"] == list(CLASSES)
    assert config["model_args"]["distillation"] is False  # the run trained without a teacher
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0  # the digits recipe's
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == [0.485, 0.456, 0.406]
    assert cfg["num_classes"] == len(CLASSES) and cfg["classifier"] == "head.head.l" and cfg["first_conv"] == "stem.conv1.c"
    assert "hf_hub_id" not in cfg and "tag" not in cfg  # not timm's ImageNet weights
    assert sorted(p.name for p in saved.api.iterdir()) == sorted(HUB_FILES)
    # repvit reads the folder's weights back too, with the class names
    checkpoint = repvit.read_checkpoint(saved.api / "model.safetensors")
    assert checkpoint.format == "timm" and checkpoint.class_names == list(CLASSES)


def test_model_card(run, saved):
    card = (saved.cli / "README.md").read_text()
    record = json.loads((run.result.output / "metrics.jsonl").read_text().splitlines()[-1])
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: timm\n")
    assert f"| val top-1 (%) | {record['val_top1']:.4g} |" in card  # from metrics.jsonl
    assert "| Pixel 8, ExecuTorch XNNPACK | 1.9 |" in card
    assert "\n# repvit_m0_9 trained on digits\n" in card and "Trained on digits." in card and "`0`, `1`, `2`" in card
    assert "| epochs | `1` |" in card and "| teacher |" not in card and "checkpoint-best.pth of a `repvit train` run" in card
    assert str(run.tmp) not in card  # no local paths in a public card
    assert "@inproceedings{wang2024repvit" in card and "Apache-2.0" in card
    assert f'timm.create_model("hf-hub:{REPO_PLACEHOLDER}", pretrained=True)' in card


def test_a_distilled_model_with_given_metrics(tmp_path):
    model = repvit.create_model("repvit_m0_9", num_classes=4, distillation=True)
    out = repvit.save_pretrained(model, tmp_path / "hub", class_names=list("abcd"), metrics={"top1": 91.5}, img_size=64)
    config = json.loads((out / "config.json").read_text())  # the folder was reloaded in timm and compared
    assert config["model_args"]["distillation"] is True
    assert config["pretrained_cfg"]["classifier"] == ["head.head.l", "head.head_dist.l"]
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64] and config["pretrained_cfg"]["pool_size"] == [2, 2]
    assert "| top-1 (%) | 91.5 |" in (out / "README.md").read_text()
    assert model.training  # the caller's model is untouched
    # a bfloat16 (or CUDA) model is written as timm's float32 files
    repvit.save_pretrained(model.to(torch.bfloat16), tmp_path / "bf16", class_names=list("abcd"), img_size=64)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_to_timm_inverts_the_timm_conversion():
    state = repvit.create_model("repvit_m1", num_classes=3, distillation=True).state_dict()  # legacy token mixer
    theirs = to_timm(state)
    assert "stem.conv1.c.weight" in theirs and "head.head_dist.l.weight" in theirs
    assert "stages.0.blocks.0.token_mixer.conv1.c.weight" in theirs
    back, fmt = convert_state_dict(theirs)
    assert fmt == "timm" and list(back) == list(state)
    with pytest.raises(CheckpointError, match="expected a state dict in this package's names"):
        to_timm(theirs)


@pytest.mark.parametrize("build, message", [
    (lambda: repvit.create_model("repvit_m0_6"), "timm has no repvit_m0_6 architecture"),
    (lambda: repvit.reparameterize(repvit.create_model("repvit_m0_9")), "reparameterized (deployed)"),
    (lambda: repvit.create_model("repvit_m0_9", features_only=True), "features_only backbone"),
])
def test_models_timm_cannot_load_are_refused(tmp_path, build, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        repvit.save_pretrained(build(), tmp_path / "hub")
    assert "\n" not in str(err.value) and not (tmp_path / "hub").exists()


@pytest.mark.parametrize("extra, message", [
    (lambda run, out: ["--weights", str(run.result.deployed_best), "--out", str(out)], "fusing cannot be undone"),
    (lambda run, out: ["--weights", str(run.best), "--out", str(run.result.output)], "holds other files"),
    (lambda run, out: ["--weights", str(run.best), "--format", "timm", "onnx"], "runs alone"),
    (lambda run, out: ["--weights", str(run.best), "--int8"], "--int8 applies to runtime formats"),
    (lambda run, out: ["--weights", str(run.best), "--latency", "fast"], "expected SETTING=MS"),
    (lambda run, out: ["--out", str(out)], "--weights is required"),
])
def test_cli_refusals_are_one_line(run, tmp_path, capsys, extra, message):
    argv = ["export", "repvit_m0_9", "--format", "timm", *extra(run, tmp_path / "hub")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "hub").exists()


@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi's network methods replaced by recorders; a token in the environment."""
    calls = {}

    def record(name, result=None):
        def method(self, *args, **kwargs):
            calls[name] = (args, kwargs)
            return result(*args, **kwargs) if result else None
        monkeypatch.setattr(HfApi, name, method)

    record("create_repo", lambda repo_id, **_: SimpleNamespace(repo_id=repo_id))
    record("create_branch")
    def upload(folder_path, repo_id, **_):  # what would be sent, read while the staged folder exists
        calls["uploaded"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")

    record("upload_folder", upload)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return calls


def test_push_to_hub(saved, tmp_path, hub_calls, capsys):
    folder = shutil.copytree(saved.api, tmp_path / "folder")
    assert main(["push-to-hub", str(folder), REPO, "--private", "--revision", "v1", "--commit-message", "first"]) == 0
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/{REPO}/commit/1"
    assert hub_calls["create_repo"] == ((REPO,), {"private": True, "exist_ok": True})
    assert hub_calls["create_branch"] == ((REPO,), {"branch": "v1", "exist_ok": True})
    upload = hub_calls["upload_folder"][1]
    assert upload["repo_id"] == REPO and upload["revision"] == "v1" and upload["commit_message"] == "first"
    sent = hub_calls["uploaded"]
    assert sorted(sent) == sorted(HUB_FILES) and sent["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    card = sent["README.md"].decode()  # the uploaded card names the repository ...
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in card and REPO_PLACEHOLDER not in card
    assert REPO_PLACEHOLDER in (folder / "README.md").read_text()  # ... the folder stays reusable for another repo


def test_a_network_failure_during_the_upload_is_one_line(saved, hub_calls, monkeypatch, capsys):
    import httpx2

    def unreachable(self, **kwargs):
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(HfApi, "upload_folder", unreachable)
    assert main(["push-to-hub", str(saved.api), REPO]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{REPO}: the upload failed (" in err and "Connection refused" in err


def test_push_to_hub_refusals(saved, tmp_path, hub_calls, monkeypatch, capsys):
    assert main(["push-to-hub", str(tmp_path), REPO]) == 2  # an empty folder
    assert "has no config.json or model.safetensors" in capsys.readouterr().err
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["push-to-hub", str(saved.api), REPO]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token: log in with `hf auth login`" in err and err.count("\n") == 1
    assert not hub_calls
