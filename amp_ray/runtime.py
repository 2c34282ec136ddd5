"""Starting or joining Ray, quietly.

With RAY_ADDRESS set (as it is under `ray job submit`) amp-ray joins that cluster; otherwise it
starts a local Ray sized from the spec's `resources` block, or from the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from amp_ray.spec.blocks import ActorPoolSpec, ResourcesSpec

if TYPE_CHECKING:
    import ray.data


class RaySession:
    """Starts Ray on first use (`ensure`) and shuts down on exit only what it started itself."""

    def __init__(
        self, resources: ResourcesSpec, verbose: bool = False, data_store_gb: float | None = None
    ) -> None:
        self.resources = resources
        self.verbose = verbose
        self.data_store_gb = data_store_gb
        self.started_here = False

    def ensure(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if not self.verbose:
            quiet_ray_logs()
        # Ray Data's Parquet reader starts 32 footer-reading actors (processes) per read by
        # default: sized for buckets of thousands of files, it costs seconds of CPU per read on
        # a small machine and our run datasets have a few files. Users may still set it.
        cpus = self.resources.num_cpus or os.cpu_count() or 1
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", str(min(32, max(2, cpus))))
        common = {
            "log_to_driver": self.verbose,
            "logging_level": logging.INFO if self.verbose else logging.ERROR,
            "configure_logging": True,
        }
        address = os.environ.get("RAY_ADDRESS")
        local = {
            "num_cpus": self.resources.num_cpus or os.cpu_count() or 1,
            "num_gpus": self.resources.num_gpus,
            "object_store_memory": _bytes(self.resources.object_store_memory_gb),
            "include_dashboard": False,
        }
        if not address:
            # Ray Train starts a preemption watcher (an actor, a process) per training run to
            # poll the nodes for spot-instance notices; a local Ray has none to watch (~2 s of
            # CPU per run, 13 runs in the demo). Clusters keep it; users may still set it.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        with contextlib.nullcontext() if self.verbose else _stderr_to_file():
            ray.init(address=address, **common) if address else ray.init(**local, **common)
        self.started_here = not address
        configure_ray_data(self.verbose, self.data_store_gb)

    @property
    def joins_cluster(self) -> bool:
        """Whether `ensure` joins a running cluster (RAY_ADDRESS) rather than starting Ray."""
        import ray

        return bool(os.environ.get("RAY_ADDRESS")) or ray.is_initialized()

    def __enter__(self) -> RaySession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.started_here:
            import ray

            ray.shutdown()
            self.started_here = False


def quiet_ray_logs() -> None:
    """Keep Ray's own processes and deprecation chatter off the terminal (logs stay in /tmp/ray).

    The core worker of this process logs to stderr; at level fatal it no longer prints an error
    line for every Ray Data actor pool (their constructor arguments live in the object store).
    """
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def configure_ray_data(verbose: bool, object_store_gb: float | None = None) -> None:
    """One progress display per stage: Ray Data's global bar in a terminal, not one per operator.

    Outside a terminal (CI, `ray job logs`) Ray Data would log progress lines instead; those are
    muted with its logger, and the stage's summary line is the record. With `object_store_gb`,
    each pipeline started from here (Ray Train passes this context on to its workers' input
    streams) holds at most that many GB of blocks: Ray Data backs its faster operators off.
    """
    from ray.data import DataContext

    if not verbose:  # Ray Data's own INFO/WARNING lines; its progress bar is not a log line
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = DataContext.get_current()
    context.enable_operator_progress_bars = verbose
    context.enable_progress_bars = True
    context.enable_rich_progress_bars = True
    context.use_ray_tqdm = False
    context.print_on_execution_start = verbose
    if object_store_gb is not None:
        limits = context.execution_options.resource_limits
        context.execution_options.resource_limits = limits.copy(
            object_store_memory=object_store_gb * 1e9
        )


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[None]:
    """Send this process's C-level stderr to a log file while Ray's core worker starts.

    The core worker announces its log level on stderr as it starts; Python exceptions from
    `ray.init` are unaffected. The text is kept in the temp folder for a look when debugging.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    path = os.path.join(tempfile.gettempdir(), f"amp-ray-ray-init-{os.getpid()}.log")
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _bytes(gigabytes: float | None) -> int | None:
    return None if gigabytes is None else int(gigabytes * 1024**3)


def torch_threads_for(num_cpus: float) -> int:
    """Threads a worker may use: the CPUs it owns (oversubscribed, 2 cores ran ~10x slower)."""
    return max(1, int(num_cpus))


# CPUs a light Ray Data task (reading Parquet, filtering rows) asks for. Fractional, so that it
# still fits beside actor pools that hold whole CPUs: on a 2-CPU Ray, two 1-CPU actors and a
# 1-CPU read task wait on each other forever, without an error.
LIGHT_TASK_CPUS = 0.25


def light_map(dataset: ray.data.Dataset, fn: Any) -> ray.data.Dataset:
    """`dataset.map_batches(fn)` on pyarrow batches, as a light task (see LIGHT_TASK_CPUS)."""
    return dataset.map_batches(fn, batch_format="pyarrow", num_cpus=LIGHT_TASK_CPUS)


def concurrent_pools(pool: ActorPoolSpec, cluster_config: str | None = None) -> int:
    """How many actor pools of this shape can run at once and still leave one whole CPU for the
    tasks that feed them: an actor holds its CPUs from start to end, busy or not, and some of Ray
    Data's own tasks (listing Parquet files) ask for a whole CPU. On a cluster that an autoscaler
    grows, the count is for the cluster at its largest (the pools' requests make it grow)."""
    from amp_ray.cluster.capacity import current_view
    from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, most_at_once

    view = current_view(cluster_config)
    if view.can_grow() and view.node_types is not None:
        return max(1, most_at_once(pool.bundle, view.node_types) // pool.min_actors)
    free = sum(node.get("CPU", 0.0) for node in view.nodes) - SPARE_CPUS_FOR_TASKS
    return max(1, int(free // (pool.num_cpus * pool.min_actors)))


def concurrent_runs(
    scaling: Any, input_cpus: float, wanted: int, key: str, cluster_config: str | None = None
) -> int:
    """How many training runs of this shape can train at once, up to `wanted`: each needs its
    workers' CPUs and, while they train, CPUs for the Ray Data tasks that make their inputs
    (training/inputs.py); runs whose workers held every CPU would wait on those tasks for ever.
    A run that cannot fit at all is a SpecError naming `key` (the spec's scaling block). On a
    cluster an autoscaler grows: `wanted` (every run asks for its own resources)."""
    from amp_ray.cluster.capacity import current_view
    from amp_ray.errors import SpecError

    view = current_view(cluster_config)
    if view.can_grow():
        return wanted
    per_run = scaling.num_workers * (scaling.cpus_per_worker + input_cpus)
    total = sum(node.get("CPU", 0.0) for node in view.nodes)
    if per_run > total:
        raise SpecError(
            f"{key} asks for {per_run:g} CPUs for its {scaling.num_workers} worker(s) and the "
            f"tasks that make their inputs (cpus_per_worker + input_cpus each); this Ray has "
            f"{total:g}",
            hint=f"lower {key}.num_workers or cpus_per_worker, or the input_cpus beside it",
        )
    return max(1, min(wanted, int(total // per_run)))


def batched(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# The stage's placement log (cluster/placement.py), set by the driver around each stage: the
# actor pools started meanwhile record where they run in it.
placement_log: str | None = None
# The running stage's queue of training progress lines (training/tracking.py), or None.
progress_queue: Any = None


class PoolActor:
    """Ray Data callable around a model stage's callable class: records where the actor runs
    (and on which device), then builds `fn_class(**kwargs)` and hands it every batch."""

    def __init__(self, fn_class: type, kwargs: dict[str, Any], role: str, log: str | None) -> None:
        from amp_ray.cluster.placement import record_placement

        record_placement(role, log)
        self.fn = fn_class(**kwargs)

    def __call__(self, batch: Any) -> Any:
        return self.fn(batch)


def map_with_actor_pool(
    dataset: ray.data.Dataset,
    fn_class: type,
    pool: ActorPoolSpec,
    kwargs: dict[str, Any],
    batch_format: str = "pyarrow",
    role: str | None = None,
    whole_blocks: bool = False,
) -> ray.data.Dataset:
    """`dataset.map_batches` over a pool of stateful actors, each built as `fn_class(**kwargs)`,
    sized by an `ActorPoolSpec`: fixed, or [min, max] actors that grow with the cluster, placed
    on nodes with the pool's GPUs, accelerator type and custom resources.

    `whole_blocks`: each block of `dataset` is one batch (storage/batches.fixed_batches), so that
    which rows share a batch never follows the order blocks arrive in. Ray Data refuses whole
    blocks to a GPU pool (it needs a batch size there); GPU pools take `pool.batch_size`, and
    their kernels are not bit-exact run to run anyway. A pool built with vLLM settings
    (kwargs["vllm"], spec/engines.py) starts its actors from the vLLM environment's Python."""
    import ray.data

    name = role or fn_class.__name__
    if "model" in kwargs:  # an ActorModel (models/registry.py)
        name = f"{name}:{kwargs['model'].name}"
    remote_args: dict[str, Any] = {}
    if pool.accelerator_type:
        remote_args["accelerator_type"] = pool.accelerator_type
    if pool.resources:
        remote_args["resources"] = dict(pool.resources)
    if kwargs.get("vllm") is not None:
        remote_args["runtime_env"] = kwargs["vllm"].runtime_env()
    return dataset.map_batches(
        PoolActor,
        fn_constructor_args=(fn_class, kwargs, name, placement_log),
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
        batch_size=None if whole_blocks and not pool.num_gpus else pool.batch_size,
        batch_format=batch_format,
        **remote_args,
    )
