"""The house's layers: no module imports from a layer above its own, and no module is too large."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fusionctl"
# lowest first; a module may import from its own layer and the ones below
LAYERS = [
    ("base", ["errors", "config", "versions", "device", "store"]),
    ("ot", ["ot"]),
    ("models/data", ["models", "data"]),
    ("fusion", ["fusion"]),
    ("eval", ["eval", "plots", "training"]),
    ("jobs", ["jobs"]),
    ("commands", ["commands", "api", "connectivity"]),
    ("cli", ["cli", "__init__"]),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> int:
    """fusionctl.fusion.wb -> rank of 'fusion'; fusionctl -> the top."""
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 else RANK["__init__"]


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fusionctl") and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("fusionctl")]
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield ".".join(p for p in rel.parts if p != "__init__") if rel.name == "__init__" else ".".join(rel.parts), path


def test_every_module_has_a_layer():
    for name, _ in modules():
        layer_of(name if name != "fusionctl" else "fusionctl")


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for name, path in modules():
        if name == "fusionctl":
            continue  # the package's lazy Python API (fusionctl.fuse_models) is its top
        for target in imports(path):
            if target != "fusionctl" and layer_of(target) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(upward)


def test_no_module_is_over_300_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in [*PACKAGE.rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > 300]
    assert not long, long
