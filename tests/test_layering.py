"""The package's layers: core modules never import a task (classification, detection) or
the CLI, no two modules import each other, and ``import snnconv`` loads no task code."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "snnconv"

# The core: what convert -> simulate needs. Tasks and front ends sit above it.
CORE = ("functional", "neurons", "convert", "engine", "network", "metrics", "activations", "inputs", "registry", "errors",
        "device", "distributed")
ABOVE_CORE = ("detection", "cli", "__main__", "train", "training", "experiments", "report", "demo", "data", "models")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the snnconv modules ``path`` imports (``if TYPE_CHECKING`` blocks
    excluded; with ``top_level_only``, imports inside functions excluded too)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if inside and top_level_only:
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "snnconv")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "snnconv":
                    continue
                found.add(target)
                for alias in child.names:  # "from . import resnet": the submodule
                    candidate = f"{target}.{alias.name}"
                    if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                            PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").exists():
                        found.add(candidate)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_graph_walker_sees_relative_imports_and_skips_type_checking_blocks():
    engine = _imports(PACKAGE / "engine.py", top_level_only=False)
    assert "snnconv.neurons" in engine and "snnconv.errors" in engine
    assert "snnconv.network" not in engine  # only under TYPE_CHECKING
    models = _imports(PACKAGE / "models" / "__init__.py", top_level_only=True)
    assert {"snnconv.models.resnet", "snnconv.models.registry"} <= models


@pytest.mark.parametrize("module", sorted(m for m in _all_modules() if _layer(m) in CORE))
def test_core_modules_import_no_task_and_no_cli(module):
    imported = _imports(_all_modules()[module], top_level_only=False)  # lazy imports count too
    bad = sorted(m for m in imported if _layer(m) in ABOVE_CORE)
    assert not bad, f"core module {module} imports {bad}"


def test_no_import_cycles_between_modules():
    modules = _all_modules()
    graph = {m: {i for i in _imports(p, top_level_only=False) if i in modules and i != m} for m, p in modules.items()}
    cycles = sorted((a, b) for a in graph for b in graph[a]
                    if a in graph.get(b, ()) and a < b and not (b.startswith(a + ".") or a.startswith(b + ".")))
    # The one left: zoo.load_pretrained is a convenience that imports checkpoint lazily (the
    # checkpoint module resolves zoo names). Not one of the layer cycles issue 17 removed.
    assert cycles == [("snnconv.checkpoint", "snnconv.zoo")], f"modules importing each other: {cycles}"
    for a, b in (("snnconv.cli", "snnconv.detection.cli"), ("snnconv.engine", "snnconv.network"),
                 ("snnconv.detection.model", "snnconv.models"), ("snnconv.detection", "snnconv.models")):
        assert not (b in graph[a] and a in graph[b]), (a, b)


def test_import_snnconv_loads_no_task_and_no_cli():
    code = "import json, sys, snnconv; print(json.dumps(sorted(m for m in sys.modules if m.startswith('snnconv'))))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       cwd=PACKAGE.parent).stdout)
    assert "snnconv.engine" in loaded and "snnconv.models.resnet" in loaded  # the walker is looking at the real package
    tasks = sorted(m for m in loaded if _layer(m) in ("detection", "cli", "train", "training", "experiments", "report", "data"))
    assert tasks == [], tasks


def test_the_detector_registers_on_first_lookup():
    code = ("import json, sys, snnconv; names = snnconv.list_models(); before = 'snnconv.detection' in sys.modules; "
            "model = snnconv.create_model('yolo_detector', num_classes=3, width=4); "
            "print(json.dumps([names, before, 'snnconv.detection.model' in sys.modules, type(model).__name__]))")
    names, before, after, kind = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                           check=True, cwd=PACKAGE.parent).stdout)
    assert "yolo_detector" in names and before is False and after is True and kind == "YOLODetector"


def test_engine_caches_are_declared_on_the_network():
    import torch
    from torch import nn

    from snnconv import QCFS, convert
    from snnconv.engine import SimulationCache

    snn = convert(nn.Sequential(nn.Linear(3, 4), QCFS(4), nn.Linear(4, 2)).eval(), "if")
    assert isinstance(snn.simulation_cache, SimulationCache) and snn.simulation_cache.checked_versions is None
    keys = set(vars(snn))
    snn(torch.rand(2, 3), 4)
    assert set(vars(snn)) == keys  # the engine adds nothing to the network's __dict__
    assert snn.simulation_cache.checked_versions is not None and len(snn.simulation_cache.activation_sizes) == 1
    snn.forget_checks()
    assert snn.simulation_cache.checked_versions is None
