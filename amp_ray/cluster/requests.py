"""What a job asks of a cluster, and whether a cluster's node types can ever give it. No Ray here.

A `ResourceRequest` is one spec key's actors or workers: the bundle one of them holds and how many
must run at once. A `NodeType` is one entry of a cluster launcher YAML's `available_node_types`.
`check_node_types` is the validation-time rule: a request that no node type can hold, or that the
cluster at its largest cannot hold `count` times, can never run and fails before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from amp_ray.errors import SpecError
from amp_ray.spec import JobSpec
from amp_ray.spec.blocks import ActorPoolSpec, ScalingSpec, walk_blocks

# Ray Data's read, repartition and write tasks need CPU beside the actor pools that hold theirs
# for the whole stage: pools leave this much free (runtime.LIGHT_TASK_CPUS and the whole-CPU
# Parquet listing task; on a 2-CPU Ray, pools of 2 CPUs hang the stage without an error).
SPARE_CPUS_FOR_TASKS = 1.0


@dataclass(frozen=True)
class ResourceRequest:
    """`count` actors or workers of one bundle, asked for by the spec key `key`."""

    key: str  # e.g. "generation.actors" or "training.scaling"
    bundle: dict[str, float]
    count: int
    what: str  # e.g. "the generate pool of expert_m"

    def describe(self) -> str:
        return f"{self.key} ({self.what}): {self.count} x {format_bundle(self.bundle)}"


@dataclass(frozen=True)
class NodeType:
    """A node type of a cluster: the resources each of its nodes has and how many there may be."""

    name: str
    resources: dict[str, float]
    max_workers: int  # the head type: 1, it is always there
    head: bool = False


def pool_request(key: str, pool: ActorPoolSpec, what: str) -> ResourceRequest:
    """An actor pool's request: its `min_actors` must fit for it to start at all."""
    return ResourceRequest(key, pool.bundle, pool.min_actors, what)


def workers_request(key: str, scaling: ScalingSpec, what: str) -> ResourceRequest:
    """A Ray Train run's request: every worker at once (one placement group)."""
    return ResourceRequest(key, scaling.bundle, scaling.num_workers, what)


def format_bundle(bundle: dict[str, float]) -> str:
    shown = ", ".join(f"{name}: {value:g}" for name, value in bundle.items() if value)
    return "{" + shown + "}"


def fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0.0) >= value for name, value in bundle.items() if value)


def pack(requests: list[ResourceRequest], nodes: list[dict[str, float]], spare_cpus: float) -> bool:
    """Whether every request's `count` bundles fit on `nodes` (resources per node) at once, with
    `spare_cpus` CPUs left over somewhere. First fit, largest bundles first: a close enough
    picture of Ray's own placement for deciding whether to wait."""
    free = [dict(node) for node in nodes]
    bundles = [r.bundle for r in requests for _ in range(r.count)]
    largest_first = sorted(bundles, key=lambda b: (b.get("GPU", 0.0), b.get("CPU", 0.0)))[::-1]
    for bundle in largest_first:
        home = next((node for node in free if fits(bundle, node)), None)
        if home is None:
            return False
        for name, value in bundle.items():
            home[name] = home.get(name, 0.0) - value
    return sum(node.get("CPU", 0.0) for node in free) >= spare_cpus


def node_types_from_config(config: dict[str, Any], source: str) -> list[NodeType]:
    """The node types of a cluster launcher config (as `ray up` reads it)."""
    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise SpecError(f"{source} has no available_node_types", hint="use a cluster launcher YAML")
    head = config.get("head_node_type")
    out = []
    for name, entry in types.items():
        resources = entry.get("resources")
        if not isinstance(resources, dict):
            raise SpecError(
                f"{source}: node type {name!r} declares no resources",
                hint="write its resources (CPU, GPU, accelerator_type:<type>) in the YAML: "
                "amp-ray checks requests against them without asking the cloud",
            )
        is_head = name == head
        count = 1 if is_head else int(entry.get("max_workers", 0))
        out.append(NodeType(name, {k: float(v) for k, v in resources.items()}, count, is_head))
    return out


def load_node_types(path: str | Path) -> list[NodeType]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise SpecError(f"cluster config {path} does not exist", hint="give a cluster YAML path")
    return node_types_from_config(yaml.safe_load(file.read_text()) or {}, str(path))


def providers(bundle: dict[str, float], node_types: list[NodeType]) -> list[NodeType]:
    """The node types one node of which can hold `bundle`."""
    return [t for t in node_types if t.max_workers > 0 and fits(bundle, t.resources)]


def most_at_once(bundle: dict[str, float], node_types: list[NodeType]) -> int:
    """How many `bundle`s the cluster holds at its largest (every type at max_workers)."""
    total = 0
    for node_type in providers(bundle, node_types):
        per_node = min(
            int(node_type.resources.get(name, 0.0) // value)
            for name, value in bundle.items()
            if value
        )
        total += per_node * node_type.max_workers
    return total


def check_node_types(requests: list[ResourceRequest], node_types: list[NodeType]) -> None:
    """Fail, naming the spec key, for a request that this cluster can never satisfy."""
    types = ", ".join(f"{t.name} {format_bundle(t.resources)}" for t in node_types)
    for request in requests:
        if not providers(request.bundle, node_types):
            raise SpecError(
                f"{request.key} asks for {format_bundle(request.bundle)} per actor or worker "
                f"({request.what}), which no node type of the cluster has",
                hint=f"the node types are: {types}; change {request.key} (accelerator_type, "
                "num_gpus, num_cpus, resources) or add a node type that has it",
            )
        room = most_at_once(request.bundle, node_types)
        if room < request.count:
            raise SpecError(
                f"{request.key} needs {request.count} x {format_bundle(request.bundle)} at once "
                f"({request.what}), but the cluster at its largest holds {room}",
                hint=f"lower {request.key} (num_actors or num_workers) or raise max_workers of "
                f"{', '.join(t.name for t in providers(request.bundle, node_types))}",
            )


# The spec blocks whose actor pools and Ray Train workers each stage starts.
STAGE_BLOCKS: dict[str, tuple[str, ...]] = {
    "data": ("data.",),
    "sft": ("sft.",),
    "generate": ("generation.",),
    "rank": ("ranking.",),
    "reference": ("reference.",),
    "train": ("training.",),
    "evaluate": ("evaluation.",),
    "sweep": ("training.", "evaluation."),
}


def spec_requests(spec: JobSpec, stages: list[str]) -> list[ResourceRequest]:
    """Every actor pool and Ray Train worker set that `stages` of `spec` start."""
    prefixes = [p for stage in stages for p in STAGE_BLOCKS.get(stage, ())]
    if spec.training.online.rounds and ("train" in stages or "sweep" in stages):
        prefixes += ["generation.", "ranking.", "reference."]  # the online rounds' pools
    out = []
    for key, block in walk_blocks(spec):
        if not key.startswith(tuple(prefixes)):
            continue
        if isinstance(block, ActorPoolSpec):
            out.append(pool_request(key, block, "an actor pool"))
        elif isinstance(block, ScalingSpec):
            out.append(workers_request(key, block, "Ray Train workers"))
    return out
