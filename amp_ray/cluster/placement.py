"""Where a stage's actors and Ray Train workers ran, and which device each one computes on.

`compute_device` is the one rule for the device: an actor or worker that Ray gave a GPU uses
CUDA; when the GPU is only a logical resource (no CUDA device, as on Ray's simulated cluster or
a node whose driver is broken), it computes on the CPU and says so once in its log.

`record_placement` (in an actor or worker) adds (role, node id, node type, GPU ids, device) to
the stage's `PlacementLog`, a named actor the driver starts per stage (`open_log`) and drains into
the stage's record (`take`), so that a run shows where its GPU work actually ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

ENV_LOG = "AMP_RAY_PLACEMENT_LOG"  # the log's actor name, for Ray Train workers
NAMESPACE = "amp-ray"
logger = logging.getLogger(__name__)
_warned = False


class PlacementLog:
    """A named actor that collects placements; holds no CPU."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)

    def take(self) -> list[dict[str, Any]]:
        entries, self.entries = self.entries, []
        return entries


def log_name(run_uri: str, stage: str) -> str:
    return f"placements:{run_uri}:{stage}"


def open_log(name: str) -> Any:
    """Start (or find) the named placement log on the driver's node (it must outlive any worker
    node the stage loses); the driver keeps the handle."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0)(PlacementLog)
    options = {"name": name, "namespace": NAMESPACE, "get_if_exists": True}
    return actor.options(**options, scheduling_strategy=here).remote()


def take(log: Any) -> list[dict[str, Any]]:
    """Every placement recorded since the last take, sorted."""
    import ray

    entries = ray.get(log.take.remote())
    return sorted(entries, key=lambda e: (e["role"], e["node_id"], str(e["gpu_ids"])))


def stop(log: Any) -> None:
    import ray

    ray.kill(log)


def compute_device(gpu_ids: list[Any] | None = None) -> str:
    """'cuda' for an actor or worker that Ray gave a GPU on a machine with CUDA, else 'cpu'."""
    global _warned
    import ray
    import torch

    assigned = ray.get_gpu_ids() if gpu_ids is None else gpu_ids
    if not assigned:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if not _warned:
        _warned = True
        logger.warning(
            "Ray gave this process GPU %s, but torch sees no CUDA device (a logical GPU, as on "
            "a simulated cluster): computing on the CPU",
            assigned,
        )
    return "cpu"


def train_worker_device(role: str) -> Any:
    """The torch device of a Ray Train worker (its own GPU, or the CPU), recorded as `role`."""
    import ray.train.torch
    import torch

    if record_placement(role) == "cuda":
        return ray.train.torch.get_device()
    return torch.device("cpu")


def record_placement(role: str, log: str | None = None) -> str:
    """Record where this actor or worker runs in the stage's log (if any); return its device."""
    import ray

    device = compute_device()
    name = log or os.environ.get(ENV_LOG)
    if not name:
        return device
    context = ray.get_runtime_context()
    entry = {
        "role": role,
        "node_id": context.get_node_id(),
        "node_type": os.environ.get("RAY_NODE_TYPE_NAME"),
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "device": device,
    }
    # no log (a stage run outside the pipeline, as in some tests): nothing to record
    with contextlib.suppress(ValueError):
        ray.get(ray.get_actor(name, namespace=NAMESPACE).add.remote(entry))
    return device
