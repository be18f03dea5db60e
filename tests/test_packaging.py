"""Packaging: the sdist and the wheel build and pass ``twine check``, and the wheel works with only the
core dependencies installed (no extras), where a command that needs an extra says so in one line.

The wheel is built from the sdist (``python -m build --no-isolation``, no network: the venv's
setuptools), which also proves the sdist is complete and leaves no ``build/`` in the checkout.

The core-only environment is a fresh ``python -m venv`` (no system site packages, no pip) with the
built wheel installed by ``pip install --no-deps --no-index``. Its dependencies are not installed for
real: a real ``pip install`` of the wheel into a fresh venv takes ~4 minutes and 5.6 GB (torch and
its CUDA libraries; done once by hand, it resolved exactly the distributions computed here), and
these tests never touch the network. Instead a ``.pth`` file puts one temporary folder on
``sys.path``, holding symlinks to the installed files of exactly the distributions pip would install
for the wheel: the closure of the wheel's own core ``Requires-Dist`` (read from the built wheel,
markers evaluated for this interpreter, extras left out unless a requirement asks for them),
resolved recursively through ``importlib.metadata``. Each of those distributions gets its top-level
packages and modules and its ``.dist-info`` linked (so ``pip check`` in the fresh venv sees them, and
passes), its ``.pth`` files linked into the venv's site-packages (where pip would put them); a
folder shared with a distribution outside the closure (a namespace package) is linked one level
deeper. It is the same set of files pip would install from the same versions, minus console scripts
and byte-code caches; anything else the dev venv holds (matplotlib, scikit-learn, onnxruntime, ...)
is not importable there, which the tests check.
"""

from __future__ import annotations

import csv
import email
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

import repvit

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
#: Packages the core install must not bring (each belongs to an extra).
EXTRAS_ONLY = ("matplotlib", "scikit-learn", "threadpoolctl", "onnx", "onnxruntime", "executorch", "coremltools")


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from it (so the wheel proves the sdist is complete)."""
    out = tmp_path_factory.mktemp("dist")
    done = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


def test_twine_check_passes(dist):
    done = run(sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_metadata(dist):
    meta = wheel_metadata(dist["wheel"])
    assert meta["Name"] == "repvit-toolkit" and meta["Version"] == repvit.__version__
    assert meta["License-Expression"] == "Apache-2.0" and meta["Description-Content-Type"] == "text/markdown"
    assert "Paper, https://arxiv.org/abs/2307.09283" in meta.get_all("Project-URL")
    core = {canonicalize_name(Requirement(r).name) for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert core == {"torch", "torchvision", "timm", "huggingface-hub", "safetensors", "pillow", "numpy", "pyyaml", "rich"}
    assert {"plots", "quickstart", "bench", "export", "all"} <= set(meta.get_all("Provides-Extra"))


def test_sdist_and_wheel_contents(dist):
    with tarfile.open(dist["sdist"]) as tar:
        sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for kept in ("pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "Makefile", "constraints.txt", ".ci/run",
                 "mkdocs.yml", "tests/conftest.py", "docs/pareto_cpu_1thread.png", "benchmarks/results",
                 "src/repvit/recipes/digits.yaml", "src/repvit/data/published.yaml", "src/repvit/cli/__init__.py"):
        assert any(name == kept or name.startswith(kept + "/") for name in sdist), kept
    for dropped in (".venv/", "exports/", "runs/", "test-artifacts/", "build/", "dist/", "site/", ".git/"):
        assert not any(name.startswith(dropped) for name in sdist), dropped
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in sdist)
    with zipfile.ZipFile(dist["wheel"]) as z:
        wheel = set(z.namelist())
    assert {"repvit/recipes/digits.yaml", "repvit/recipes/imagenet.yaml", "repvit/data/published.yaml"} <= wheel
    assert all(name.startswith(("repvit/", "repvit_toolkit-")) for name in wheel)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel)  # the Apache-2.0 text


def core_closure(requirements) -> dict[str, md.Distribution]:
    """The installed distributions that ``requirements`` need, recursively (markers evaluated here;
    a dependency's extras only when a requirement names them)."""
    found, extras = {}, {}
    queue = [Requirement(r) for r in requirements]
    queue = [r for r in queue if r.marker is None or r.marker.evaluate({"extra": ""})]
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        if name in found and set(req.extras) <= extras[name]:
            continue
        dist = md.distribution(req.name)
        assert req.specifier.contains(dist.version, prereleases=True), f"{req} but {dist.version} is installed"
        found[name], extras[name] = dist, extras.get(name, set()) | set(req.extras)
        for text in dist.requires or ():
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *extras[name])):
                queue.append(dep)
    return found


def record_paths(dist: md.Distribution) -> list[str]:
    """The files of ``dist`` relative to its site-packages (console scripts outside it left out)."""
    rows = csv.reader((dist.read_text("RECORD") or "").splitlines())
    return [row[0] for row in rows if row and not row[0].startswith("../")]


def link_closure(closure: dict[str, md.Distribution], folder: Path, site_packages: Path) -> None:
    """Symlink the files of ``closure`` into ``folder`` (``.pth`` files into ``site_packages``)."""
    inside = set(closure)
    everyone = [(canonicalize_name(d.metadata["Name"]), Path(d.locate_file("")), record_paths(d))
                for d in md.distributions()]
    top_owners = {}
    for name, base, paths in everyone:
        for top in {p.split("/")[0] for p in paths}:
            top_owners.setdefault((base, top), set()).add(name)

    def owners(base: Path, prefix: str) -> set[str]:
        if "/" not in prefix:
            return top_owners[base, prefix]
        return {name for name, b, paths in everyone if b == base
                and any(p == prefix or p.startswith(prefix + "/") for p in paths)}

    def place(base: Path, prefix: str, paths: list[str]) -> None:
        if "/" not in prefix and prefix.endswith(".pth"):
            (site_packages / prefix).symlink_to(base / prefix)
        elif owners(base, prefix) <= inside or all(p == prefix for p in paths):  # ours alone, or one file
            target = folder / prefix
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(base / prefix)
        else:  # a folder shared with a distribution outside the closure: one level deeper
            below = [p for p in paths if p.startswith(prefix + "/")]
            for child in sorted({p[len(prefix) + 1:].split("/")[0] for p in below}):
                place(base, f"{prefix}/{child}", [p for p in below if p.startswith(f"{prefix}/{child}")])

    for name, dist in closure.items():
        base, paths = Path(dist.locate_file("")), record_paths(dist)
        assert paths, f"{name} has no RECORD: cannot tell its files"
        for top in sorted({p.split("/")[0] for p in paths} - {"__pycache__"}):
            place(base, top, [p for p in paths if p == top or p.startswith(top + "/")])


@pytest.fixture(scope="module")
def core_venv(dist, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed and exactly its core dependency closure importable."""
    root = tmp_path_factory.mktemp("corevenv")
    env = root / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=True).create(env)  # python -m venv
    python = env / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    done = run(*pip, "install", "--quiet", "--no-deps", "--no-index", dist["wheel"])
    assert done.returncode == 0, done.stderr
    (site_packages,) = (env / "lib").glob("python3*/site-packages")
    requirements = wheel_metadata(dist["wheel"]).get_all("Requires-Dist")
    closure = core_closure(requirements)
    assert not set(closure) & set(EXTRAS_ONLY), sorted(closure)
    link_closure(closure, root / "core-deps", site_packages)
    (site_packages / "000-repvit-core-deps.pth").write_text(f"{root / 'core-deps'}\n")  # before setuptools' .pth
    done = run(*pip, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    return env


#: Runs inside the core venv: the library and the CLI in-process (one torch import for all of it).
IN_VENV = textwrap.dedent("""
    import contextlib, importlib.util, io, json, sys
    import torch, repvit
    from repvit.cli import main

    def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(argv))
            except SystemExit as stop:
                rc = stop.code
        return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}

    torch.manual_seed(0)
    model = repvit.create_model("repvit_m0_6").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = float((model(x) - repvit.reparameterize(model)(x)).abs().max())
    image, weights, out = sys.argv[1:4]
    print(json.dumps({
        "repvit": repvit.__file__, "reparam_max_abs_diff": diff,
        "importable": {m: importlib.util.find_spec(m) is not None
                       for m in ("onnxruntime", "onnx", "matplotlib", "sklearn", "threadpoolctl", "executorch")},
        "version": cli("--version"),
        "models": cli("models", "--json", "--img-size", "64"),
        "predict": cli("predict", image, "--model", "repvit_m0_6", "--weights", weights, "--json"),
        "export": cli("export", "repvit_m0_6", "--format", "onnx", "--img-size", "32", "--out", out, "--json"),
    }))
""")


def core_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_the_wheel_works_with_only_the_core_dependencies(core_venv, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(image)
    model = repvit.create_model("repvit_m0_6", num_classes=2)
    weights = repvit.save_weights(model, tmp_path / "two.safetensors", class_names=["red", "green"])
    done = run(core_venv / "bin" / "python", "-c", IN_VENV, image, weights, tmp_path / "exports",
               env=core_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])

    assert Path(got["repvit"]).is_relative_to(core_venv)  # the wheel, not this checkout
    assert not any(got["importable"].values()), got["importable"]  # core only
    assert got["reparam_max_abs_diff"] < 1e-4
    assert got["version"]["out"].strip() == f"repvit {repvit.__version__} (repvit-toolkit)"
    assert got["models"]["rc"] == 0 and "repvit_m0_9" in {m["model"] for m in json.loads(got["models"]["out"])}
    assert got["predict"]["rc"] == 0, got["predict"]["err"]
    (prediction,) = json.loads(got["predict"]["out"])
    assert {t["name"] for t in prediction["top"]} == {"red", "green"}
    # export: one row per format; an unavailable one names the extra, and the command fails
    assert got["export"]["rc"] == 1 and "Traceback" not in got["export"]["err"]
    (row,) = json.loads(got["export"]["out"])
    assert row["status"] == "unavailable"
    assert row["detail"] == "missing package onnx, onnxscript, onnxruntime: pip install 'repvit-toolkit[export]'"


def test_a_command_that_needs_an_extra_says_which_in_one_line(core_venv, tmp_path):
    done = run(core_venv / "bin" / "repvit", "quickstart", "--out", tmp_path / "qs", env=core_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("repvit quickstart: error: missing package sklearn, matplotlib: "
                                   "pip install 'repvit-toolkit[quickstart]'")
    assert not (tmp_path / "qs").exists()  # said before doing anything


def test_missing_extras_in_process(monkeypatch, tmp_path, capsys):
    """The same one-line errors from the library, and the benchmark's peak without threadpoolctl."""
    from repvit.data import make_digits_image_folder
    from repvit.tools import bench, plot_training_curves
    from repvit.utils import UserError, extras

    absent = {"sklearn", "matplotlib", "threadpoolctl", "executorch"}
    monkeypatch.setattr(extras, "missing_modules", lambda modules: [m for m in modules if m in absent])
    with pytest.raises(UserError, match=r"^missing package sklearn: pip install 'repvit-toolkit\[quickstart\]'$"):
        make_digits_image_folder(tmp_path / "digits")
    with pytest.raises(UserError, match=r"^missing package matplotlib: pip install 'repvit-toolkit\[plots\]'$"):
        plot_training_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "c.png")
    rates = bench.matmul_peak_gflops(n=64, repeats=2)
    assert set(rates) == {"torch", "peak"} and rates["peak"] == rates["torch"] > 0
    # --plot without matplotlib fails before any measuring (the measuring functions are not reached)
    from repvit.cli import main, measure, sam

    def not_reached(*args, **kwargs):
        raise AssertionError("measured before checking for matplotlib")

    for module, name in ((measure, "run_bench"), (measure, "roadmap_report"), (sam, "run_sam_bench")):
        monkeypatch.setattr(module, name, not_reached)
    capsys.readouterr()  # the peak's warning above reaches stderr when an earlier test set up the CLI's logging
    for command in (["bench", "--plot", "p.png"], ["roadmap", "--plot", "p.png"], ["sam", "bench", "--plot", "p.png"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "missing package matplotlib: pip install 'repvit-toolkit[plots]'" in err
