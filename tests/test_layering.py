"""The layering rule of the package, checked on every module's source (function-local imports too).

Sub-packages are layers, listed below from the bottom up. A module may import repvit modules of its
own layer or of layers below it, at module level; never a layer above, never in a cycle. A
function-local import is only for an optional third-party extra (a runtime that `pip install
'repvit-toolkit[...]'` adds), never for a repvit module and never for a core dependency.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Bottom to top. "compat" holds the deprecated module paths (thin re-exports) and the package entry
#: points: nothing inside the package may import them.
LAYERS = ["utils", "specs", "layers", "reparam", "models", "weights", "factory", "data", "export", "train", "dense",
          "sam", "tools", "cli", "compat"]
COMPAT = {"__init__", "__main__", "complexity", "published", "predict", "recipe", "engine", "distill",
          "quickstart", "roadmap", "detection", "segmentation", "synthetic", "quantize", "qat", "bench"}

#: Third-party modules that need a package only an optional extra (or the user) installs: the only
#: function-local imports allowed. torch.utils.tensorboard is torch's, but needs ``tensorboard``.
OPTIONAL = {"onnx", "onnxruntime", "onnxscript", "executorch", "torchao", "coremltools", "litert_torch",
            "ai_edge_litert", "pnnx", "ncnn", "openvino", "pycocotools", "segment_anything", "efficientsam", "sam2",
            "gradio", "torch.utils.tensorboard", "matplotlib", "sklearn", "threadpoolctl"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, packages: set[str]) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "compat"  # repvit/__init__.py
    top = parts[1]
    if top in COMPAT and f"repvit.{top}" not in packages:
        return "compat"
    return top


def _imports(tree: ast.AST):
    """(node, inside a function) for every import statement."""
    def walk(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, local
            yield from walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, False)


def _targets(node, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The absolute names an import statement refers to (a submodule when it is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    found = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in known]
    return found if len(found) == len(node.names) else [prefix] + found


def check(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Violations of the rule in ``{module: (source, is_package)}``."""
    known = set(sources)
    packages = {m for m, (_, is_package) in sources.items() if is_package}
    rank = {name: i for i, name in enumerate(LAYERS)}
    problems, edges = [], {m: set() for m in sources}
    for module, (text, is_package) in sources.items():
        for node, local in _imports(ast.parse(text)):
            for target in _targets(node, module, is_package, known):
                root = target.split(".")[0]
                if root != "repvit":
                    if local and root not in OPTIONAL and target not in OPTIONAL:
                        problems.append(f"{module}: function-local import of {target} (a core dependency: import "
                                        f"it at module level)")
                    continue
                if target not in known:
                    problems.append(f"{module}: imports {target}, which does not exist")
                    continue
                if local:
                    problems.append(f"{module}: function-local import of {target} (repvit modules are imported at "
                                    f"module level)")
                a, b = layer_of(module, packages), layer_of(target, packages)
                if a not in rank or b not in rank:
                    problems.append(f"{module} -> {target}: module outside the layers {LAYERS}")
                elif rank[b] > rank[a]:
                    problems.append(f"{module} ({a}) imports {target} ({b}): an upward import")
                if target != module:
                    edges[module].add(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted((SRC / "repvit").rglob("*.py"))}


def test_the_package_follows_the_layering_rule():
    problems = check(package_sources())
    assert not problems, "\n".join(problems)


def test_every_module_is_in_a_layer():
    sources = package_sources()
    packages = {m for m, (_, is_package) in sources.items() if is_package}
    assert {layer_of(m, packages) for m in sources} <= set(LAYERS)


@pytest.mark.parametrize("module, line, message", [
    ("repvit.models.builder", "from ..tools import bench", "an upward import"),
    ("repvit.models.builder", "import repvit.cli", "an upward import"),
    ("repvit.weights.checkpoint", "def f():\n    from ..factory import create_model", "function-local import"),
    ("repvit.export.onnx", "def f():\n    import timm", "function-local import of timm"),
    ("repvit.models.registry", "from . import variants", "import cycle"),
])
def test_the_contract_fails_on_a_violation(module, line, message):
    sources = package_sources()
    text, is_package = sources[module]
    sources[module] = (text + "\n" + line + "\n", is_package)
    problems = check(sources)
    assert any(message in p and module in p for p in problems), problems


def test_optional_extras_may_be_imported_inside_functions():
    sources = package_sources()
    text, is_package = sources["repvit.export.onnx"]
    sources["repvit.export.onnx"] = (text + "\ndef f():\n    import onnxruntime\n", is_package)
    assert check(sources) == check(package_sources())
