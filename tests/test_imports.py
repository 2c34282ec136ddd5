"""The pure parts import without the heavy stack: a module that computes on plain values (the
spec, the loss table, the world, the benchmark scores and the world's metrics) must not pull in
torch, Ray or transformers, so a spec validates and a metric computes in a bare interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "transformers", "deepspeed")
PURE = (
    "amp_ray.spec",
    "amp_ray.losses",
    "amp_ray.losses.table",
    "amp_ray.world",
    "amp_ray.evaluation.scores",
    "amp_ray.evaluation.world_metrics",
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
