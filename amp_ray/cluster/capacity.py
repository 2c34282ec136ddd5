"""Asking the cluster for what a stage needs, and waiting for an autoscaler to add it.

`ensure_resources` is the one check that a stage's actor pools or Ray Train workers can run, used
by every stage before it starts them:

- they fit the nodes that are there now: go on;
- they do not, and the cluster cannot grow (a local Ray, a fixed cluster): stop at once with the
  spec key to lower, because Ray would wait forever without an error;
- they do not, and an autoscaler runs: ask for them through Ray's autoscaling coordinator (the
  same channel Ray Data and Ray Train use, so that no request overwrites another), print what is
  awaited, and poll until the nodes are there; past `runtime.resource_wait_s` stop with an error
  naming the resource, the spec key and the node types that could provide it.

The cluster's node types come from `runtime.cluster_config`, else from the autoscaler that runs
beside this driver's head (the `--autoscaling-config` of its monitor process: `ray up` writes
~/ray_bootstrap_config.yaml on the head, where `ray job submit` runs the driver).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from amp_ray.cluster.requests import (
    NodeType,
    ResourceRequest,
    check_node_types,
    load_node_types,
    pack,
    providers,
)
from amp_ray.errors import AmpRayError, SpecError

POLL_S = 2.0
HOLD_AFTER_FIT_S = 120.0  # how long a met request is kept for the pools and workers to start
REQUESTER_PREFIX = "amp-ray"


class ClusterWaitError(AmpRayError):
    """The autoscaler did not deliver what a stage asked for in time."""


@dataclass(frozen=True)
class ClusterView:
    """The cluster as the driver sees it now."""

    nodes: list[dict[str, float]]  # resources of each live node
    node_types: list[NodeType] | None  # None: not known (no autoscaler config found)
    autoscaling: bool  # an autoscaler runs that may add nodes

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def can_grow(self) -> bool:
        if not self.autoscaling:
            return False
        return self.node_types is None or any(
            t.max_workers > 0 for t in self.node_types if not t.head
        )


def autoscaler_config_path() -> str | None:
    """The cluster YAML of the autoscaler of the Ray this driver is connected to, if one runs on
    this machine (the head). A head started without --autoscaling-config has none: it is fixed."""
    import psutil
    import ray

    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or ()
        if not any(part.endswith("autoscaler/_private/monitor.py") for part in cmdline):
            continue
        flags = [part for part in cmdline if part.startswith("--") and "=" in part]
        options = dict(flag.split("=", 1) for flag in flags)
        if options.get("--gcs-address", "").rsplit(":", 1)[-1] == port:
            return options.get("--autoscaling-config")
    return None


def current_view(cluster_config: str | None) -> ClusterView:
    import ray

    nodes = [
        {k: float(v) for k, v in node["Resources"].items()}
        for node in ray.nodes()
        if node.get("Alive")
    ]
    found = autoscaler_config_path()
    path = cluster_config or found
    node_types = load_node_types(path) if path else None
    return ClusterView(nodes, node_types, autoscaling=found is not None)


def ensure_resources(
    requests: list[ResourceRequest],
    stage: str,
    wait_s: float,
    cluster_config: str | None = None,
    spare_cpus: float = 0.0,
    echo: Callable[[str], None] = print,
) -> ClusterView:
    """Return once `requests` fit the cluster at once (see the module docstring)."""
    view = current_view(cluster_config)
    if pack(requests, view.nodes, spare_cpus):
        return view
    if view.node_types is not None:
        check_node_types(requests, view.node_types)
    if not view.can_grow():
        raise SpecError(_does_not_fit(requests, view, spare_cpus), hint=_lower_hint(requests))
    _ask(requests, stage, wait_s + HOLD_AFTER_FIT_S)
    echo(
        f"[{stage}] waiting up to {wait_s:g} s for the autoscaler to add nodes for "
        + "; ".join(r.describe() for r in requests)
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        view = current_view(cluster_config)
        if pack(requests, view.nodes, spare_cpus):
            echo(f"[{stage}] the cluster has what it needs ({view.num_nodes} nodes)")
            # held only until the pools and workers are placed: Ray Data and Ray Train then ask
            # for what they use, and a request held all stage long would count twice and keep
            # a lost node's place from being filled
            _ask(requests, stage, HOLD_AFTER_FIT_S)
            return view
    release(stage)
    raise ClusterWaitError(
        f"waited {wait_s:g} s (runtime.resource_wait_s) and the autoscaler did not add what "
        f"stage {stage!r} needs: " + "; ".join(r.describe() for r in requests),
        hint=_providers_hint(requests, view),
    )


def check_run_dir(uri: str, is_local: bool, shared: bool, view: ClusterView) -> None:
    """A run directory on local disk works on one node only: on a cluster of more nodes (or one
    that an autoscaler grows) each node would write its parts to its own disk."""
    if not is_local or shared:
        return
    if view.num_nodes <= 1 and not view.can_grow():
        return
    grows = " and an autoscaler that adds more" if view.can_grow() else ""
    raise SpecError(
        f"storage.run_dir {uri} is on local disk, but this Ray cluster has {view.num_nodes} "
        f"node(s){grows}: each node would write its parts of the run to its own disk",
        hint="use an object store (storage.run_dir=s3://BUCKET/PREFIX or gs://...), or set "
        "storage.shared=true if every node mounts this path (NFS, EFS, Filestore)",
    )


def _ask(requests: list[ResourceRequest], stage: str, expire_after_s: float) -> None:
    """Ask the autoscaler for the bundles, through Ray Data's coordinator: it merges every
    requester's bundles into the one `request_resources` call that the autoscaler keeps, and a
    direct call from here would be overwritten by its next merge."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        DefaultAutoscalingCoordinator,
    )

    bundles = [r.bundle for r in requests for _ in range(r.count)]
    requester = _requester(stage)
    DefaultAutoscalingCoordinator(requester).request_resources(bundles, expire_after_s)
    _asked.add(requester)


def release(stage: str) -> None:
    """Withdraw the stage's request, if it made one (idle nodes may then go), once its work has
    ended."""
    requester = _requester(stage)
    if requester not in _asked:
        return
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        DefaultAutoscalingCoordinator,
    )

    DefaultAutoscalingCoordinator(requester).cancel_request()
    _asked.discard(requester)


# requesters of this process with a request in force
_asked: set[str] = set()


def _requester(stage: str) -> str:
    """One requester per stage and process: sweep trials run the same stages side by side, each
    in a process of its own, and one's release must not withdraw another's request."""
    return f"{REQUESTER_PREFIX}:{stage}:{os.getpid()}"


def _does_not_fit(requests: list[ResourceRequest], view: ClusterView, spare_cpus: float) -> str:
    cpus = sum(node.get("CPU", 0.0) for node in view.nodes)
    needed = sum(r.bundle.get("CPU", 0.0) * r.count for r in requests)
    spare = f", and the tasks that read and write need {spare_cpus:g} free" if spare_cpus else ""
    return (
        "; ".join(r.describe() for r in requests)
        + f": {needed:g} CPUs in all at once, but this Ray has {cpus:g} CPUs on "
        f"{view.num_nodes} node(s){spare}, and no autoscaler that could add more"
    )


def _lower_hint(requests: list[ResourceRequest]) -> str:
    keys = ", ".join(dict.fromkeys(r.key for r in requests))
    return f"lower num_cpus (fractions are fine), num_gpus or num_actors / num_workers of {keys}"


def _providers_hint(requests: list[ResourceRequest], view: ClusterView) -> str:
    if view.node_types is None:
        return (
            "check `ray status` and the autoscaler's log (monitor.log); give the cluster YAML as "
            "runtime.cluster_config so that amp-ray can name the node types"
        )
    names = {t.name for r in requests for t in providers(r.bundle, view.node_types)}
    return (
        f"node types that could provide it: {', '.join(sorted(names))}; check `ray status`, the "
        "autoscaler's log (monitor.log) and the cloud quota for them, or raise "
        "runtime.resource_wait_s"
    )
