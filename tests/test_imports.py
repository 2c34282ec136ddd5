"""Imports in one direction: subpackages import each other without cycles, and the pure parts
import without the heavy stack: a module that computes on plain values (the
spec, the loss table, the world, the benchmark scores and the world's metrics) must not pull in
torch, Ray or transformers, so a spec validates and a metric computes in a bare interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import amp_ray

HEAVY = ("torch", "ray", "transformers", "deepspeed")
PURE = (
    "amp_ray.spec",
    "amp_ray.losses",
    "amp_ray.losses.table",
    "amp_ray.world",
    "amp_ray.evaluation.scores",
    "amp_ray.evaluation.eval_metrics",
    "amp_ray.evaluation.world_judge",
    "amp_ray.world.metrics",
    "amp_ray.world.facts",
    "amp_ray.evaluation.rubric",
)


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_without_torch_ray_or_transformers(module: str) -> None:
    probe = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], f"{module} imports them"


def top_level_imports(path: Path) -> set[str]:
    """The amp_ray modules a file imports at its top level (TYPE_CHECKING blocks aside)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("amp_ray"):
            found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("amp_ray")}
    return found


def subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_subpackages_import_each_other_without_cycles() -> None:
    """amp_ray.X -> amp_ray.Y edges of top-of-file imports form no cycle (imports inside
    functions are the escape hatch for the few upward calls, such as the pipeline's sweep)."""
    root = Path(amp_ray.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = ".".join(("amp_ray", *path.relative_to(root).with_suffix("").parts))
        for imported in top_level_imports(path):
            if subpackage(imported) != subpackage(module):
                edges.setdefault(subpackage(module), set()).add(subpackage(imported))
    cycles = []
    for start in edges:  # a path from a subpackage back to itself
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(sorted(cycles))
