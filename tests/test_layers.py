"""The layers import one way only (shared/STYLE.md): ui -> tasks -> engine, and the world (data, training,
evaluation) beside them. Each layer is imported whole in a fresh interpreter, which reports every import statement
it ran and every module it ended up with; a second check reads the imports inside functions, which run later."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engine", "tasks", "ui", "world")
# per layer: what its own import statements must not name (a name, or a package and everything in it)
FORBIDDEN = {
    "engine": ("gradio", "diffdemo.tasks", "diffdemo.ui", "diffdemo.world", "diffdemo.batch"),
    "tasks": ("gradio", "diffdemo.ui", "diffdemo.world", "diffdemo.batch"),
    "ui": ("torch", "diffusers", "transformers"),
    "world": ("gradio", "diffdemo.ui"),
}
# per layer: what must not even be loaded after importing it whole (what it pulls in through the layers below)
NOT_LOADED = {"engine": ("gradio", "diffdemo.tasks", "diffdemo.ui", "diffdemo.world"),
              "tasks": ("gradio", "diffdemo.ui", "diffdemo.world"),
              "world": ("gradio", "diffdemo.ui")}

# Runs in the fresh interpreter: records (importer, imported) for every import statement executed while the
# layer's modules load, then prints them and the loaded modules as JSON.
PROBE = r"""
import builtins, importlib, importlib.util, json, pkgutil, sys

edges, real_import = set(), builtins.__import__

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer, package = (globals or {}).get("__name__") or "", (globals or {}).get("__package__") or ""
    edges.add((importer, importlib.util.resolve_name("." * level + name, package) if level else name))
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = recording_import
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps({"edges": sorted(edges), "modules": sorted(sys.modules)}))
"""


class Report(dict):
    """What the fresh interpreter reported: ``edges`` (importer, imported) and ``modules``; short in failures."""

    def __repr__(self) -> str:
        return f"<{len(self['edges'])} imports, {len(self['modules'])} modules>"


def names(name: str, forbidden) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.fixture(scope="module", params=LAYERS)
def imported(request):
    """(layer, what the fresh interpreter reported after importing every module of ``diffdemo.<layer>``)."""
    layer = request.param
    env = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, f"diffdemo.{layer}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return layer, Report(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.slow  # a fresh interpreter per layer: about 25 s in all
def test_no_module_of_a_layer_imports_what_lies_above_it(imported):
    layer, report = imported
    wrong = sorted({f"{importer} imports {name}" for importer, name in report["edges"]
                    if importer.startswith(f"diffdemo.{layer}") and names(name, FORBIDDEN[layer])})
    assert not wrong, f"diffdemo.{layer} must not import {FORBIDDEN[layer]}:\n" + "\n".join(wrong)


@pytest.mark.slow
def test_a_layer_pulls_in_nothing_above_it(imported):
    layer, report = imported
    loaded = sorted(name for name in report["modules"] if names(name, NOT_LOADED.get(layer, ())))
    assert not loaded, f"importing diffdemo.{layer} loads {loaded[:10]}"


def function_imports(path: Path):
    """(line, imported name) for the import statements inside functions: they run only when called."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                yield from ((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                yield node.lineno, node.module


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_inside_functions_keep_the_layers_too(layer):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((ROOT / "diffdemo" / layer).rglob("*.py"))
             for line, name in function_imports(path) if names(name, FORBIDDEN[layer])]
    assert not wrong, "\n".join(wrong)
