"""The documentation: the MkDocs site builds with --strict, the README stays a working landing page.

``mkdocs build --strict`` fails on any warning: a broken link or anchor between pages, a page in the
nav that does not exist, a docstring mkdocstrings cannot parse. On top of that: the API page holds the
public API's docstrings; the README opens with ``make demo`` and ``make test`` (CI and users start
there), every relative link in it reaches a file (and an anchor of the built page, for links into
docs/), every ``repvit ...`` command it shows parses; tables a command generated are copied verbatim.
"""

import html
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = ["index", "getting-started", "models", "training", "reliability", "deployment", "sharing", "benchmarks", "dense",
         "sam", "cli", "testing", "layout", "api"]
# Tables written by a command into benchmarks/results/, and the pages that show them as written.
GENERATED_TABLES = {
    "bench_cpu_1thread.md": ["README.md", "docs/benchmarks.md"],  # repvit bench --markdown
    "roadmap_executorch_1thread.md": ["docs/benchmarks.md"],  # repvit roadmap --markdown
    "sam_bench.md": ["docs/sam.md"],  # benchmarks/sam_ratios.py
    "sam_distill.md": ["docs/sam.md"],  # benchmarks/sam_distill.py
}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install 'repvit-toolkit[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out),
                           "--config-file", str(ROOT / "mkdocs.yml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out


def _words(text: str) -> str:
    return " ".join(re.findall(r"[\w.,;:'\"()/=+-]+", text))


def _page(site: Path, name: str) -> str:
    path = site / "index.html" if name == "index" else site / name / "index.html"
    assert path.is_file(), f"{name}: not built ({path})"
    return path.read_text(encoding="utf-8")


def test_site_builds_with_every_page_and_figure(site):
    for name in PAGES:
        _page(site, name)
    for figure in ("pareto_cpu_1thread.png", "roadmap_executorch_1thread.png", "sam_bench.png"):
        assert (site / figure).stat().st_size > 1000, figure
    assert not (site / "_hooks").exists()


def test_api_page_renders_the_public_docstrings(site):
    import repvit

    api = _page(site, "api")
    text = _words(html.unescape(re.sub(r"<[^>]+>", "", api)))
    for name in (n for n in repvit.__all__ if n != "__version__"):
        assert f'id="repvit.{name}"' in api, f"repvit.{name} is missing from the API page"
        summary = re.sub(r":\w+:|[`~]", "", inspect.getdoc(getattr(repvit, name)).split("\n\n")[0])
        assert _words(summary) in text, f"repvit.{name}: its docstring is not on the API page"
    assert 'id="repvit.export.export"' in api and 'id="repvit.sam.create_sam"' in api
    assert not re.search(r":(class|func|meth|mod|attr|data):<code>", api), "a Sphinx role was left in the page"


def test_readme_opens_with_make_demo_and_make_test():
    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0].startswith("# ")
    assert lines[1] == "```bash", "the README's first content must be the make demo / make test block"
    commands = [line.split("#")[0].strip() for line in lines[2:lines.index("```", 2)]]
    assert [c for c in commands if c] == ["make demo", "make test"]


def test_readme_relative_links_reach_files_and_anchors(site):
    for target in LINK.findall(README.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README links to {path}, which does not exist"
        if anchor and path.startswith("docs/") and path.endswith(".md"):
            name = path[len("docs/"):-len(".md")]
            assert f'id="{anchor}"' in _page(site, name), f"README links to {target}: no such anchor"


def test_docs_pages_are_all_in_the_nav():
    import yaml

    nav = {page for entry in yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
           for page in entry.values()}
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name not in nav)
    assert not missing, f"docs pages missing from the nav in mkdocs.yml: {missing}"
    assert {f"{name}.md" for name in PAGES} <= nav


def test_readme_commands_parse():
    from repvit.cli import build_parser

    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [re.sub(r"\s+#.*$", "", line).strip()
                for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("repvit ")]
    assert len(commands) >= 5
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"README shows a command that does not parse: {command}")


@pytest.mark.parametrize("table", sorted(GENERATED_TABLES))
def test_generated_tables_are_copied_as_written(table):
    written = (ROOT / "benchmarks" / "results" / table).read_text(encoding="utf-8").strip()
    for page in GENERATED_TABLES[table]:
        assert written in (ROOT / page).read_text(encoding="utf-8"), (
            f"{page} does not hold benchmarks/results/{table} as written: copy the new table into it")


def test_every_extra_is_documented():
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
                 ["optional-dependencies"])
    table = set(re.findall(r"^\| `([a-z0-9-]+)` \|", (DOCS / "getting-started.md").read_text(encoding="utf-8"),
                           flags=re.M))
    assert table == extras, f"docs/getting-started.md's extras table differs from pyproject.toml: {table ^ extras}"
    readme = README.read_text(encoding="utf-8")
    assert all(f"`{extra}`" in readme for extra in extras), "README.md's list of extras is out of date"
