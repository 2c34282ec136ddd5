"""Where each model a spec names lives: a user path or hub id, or a model this run made."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from amp_ray.spec import JobSpec
from amp_ray.storage import RunDir

T = TypeVar("T")


@dataclass(frozen=True)
class LoadOptions:
    """How a model loads wherever it runs, from its `models` entry (`load_options`): passed
    whole to the actors and the training workers (models/loading.load_model)."""

    dtype: str = "auto"  # float32, bfloat16, float16, or auto: the checkpoint's
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"


@dataclass(frozen=True)
class ActorModel:
    """The model one Ray Data actor loads (models/loading.load_for_inference), built once on the
    driver (`actor_model`) and passed whole: the name its outputs carry, where it lives, how it
    loads, and the CPUs its actor owns (its torch threads)."""

    name: str
    uri: str  # what local_model_path resolves: a run's model store, a path or a hub id
    load: LoadOptions = field(default_factory=LoadOptions)
    num_cpus: float = 1.0
    storage: Any = None  # the spec's StorageSpec, for s3:// URIs


def actor_model(spec: JobSpec, run_dir: RunDir, name: str, num_cpus: float) -> ActorModel:
    """Model `name` as the spec places and loads it, for an actor of `num_cpus` CPUs."""
    uri = model_uri(spec, run_dir, name)
    return ActorModel(name, uri, load_options(spec, name), num_cpus, spec.storage)


def model_uri(spec: JobSpec, run_dir: RunDir, name: str) -> str:
    """The reference `local_model_path` resolves for model `name`.

    An SFT run's output lives at <run_dir>/sft/models/<name>, the trained policy at
    <run_dir>/train/models/<training.name>; a tiny model is built by the SFT
    stage at <run_dir>/sft/init/<name>; any other model is its `path` (hub id, directory, s3://).
    """
    if name in spec.sft.runs:
        return run_dir.location.join("sft", "models", name).uri
    if name == spec.training.name:
        return run_dir.location.join("train", "models", name).uri
    model = spec.models[name]
    if model.path is not None:
        return model.path
    return run_dir.location.join("sft", "init", name).uri


def load_options(spec: JobSpec, name: str) -> LoadOptions:
    """How model `name` loads wherever it is used (generation, scoring, evaluation, training):
    its `models` entry's dtype, remote code and attention; an SFT run's are its root model's. A
    model this run trained (training.name, its online rounds) loads in its checkpoint's dtype
    ("auto") with the other settings of the policy's root model."""
    root = root_model(spec, name)
    if root in spec.models:
        entry = spec.models[root]
        dtype = entry.dtype
    else:
        policy = root_model(spec, str(spec.training.policy)) if spec.training.policy else None
        entry = spec.models.get(policy) if policy else None
        dtype = "auto"
    if entry is None:
        return LoadOptions(dtype)
    return LoadOptions(dtype, entry.trust_remote_code, entry.attn_implementation)


def root_model(spec: JobSpec, name: str) -> str:
    """The `models` entry an SFT run chain starts from."""
    return spec.root_model(name)


def run_in_dependency_order(
    spec: JobSpec, train: Callable[[str], T], concurrency: int
) -> dict[str, T]:
    """Call `train(name)` for every SFT run, up to `concurrency` at once, each run only after
    the run it starts from has finished; the first failure stops new runs and is raised."""
    results: dict[str, T] = {}
    waiting = list(spec.sft.runs)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        running: dict[Future[T], str] = {}
        while waiting or running:
            ready = [
                n
                for n in waiting
                if spec.sft.runs[n].init not in spec.sft.runs or spec.sft.runs[n].init in results
            ]
            for name in ready[: concurrency - len(running)]:
                waiting.remove(name)
                running[pool.submit(train, name)] = name
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
    return results
