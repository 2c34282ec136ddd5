"""The candidate generators' actor pools, built by keyword in one place for the generate stage
and the online rounds: (callable class, constructor keyword arguments) for map_with_actor_pool."""

from __future__ import annotations

from typing import Any

from amp_ray.models.registry import LoadOptions
from amp_ray.spec.alignment import GenerationSpec


def model_candidates(
    generation: GenerationSpec,
    method: str,
    name: str,
    uri: str,
    initial_rank: int,
    storage: Any,
    seed: int,
    load: LoadOptions = LoadOptions(),
) -> tuple[type, dict[str, Any]]:
    """`generation.sampling.num_samples` answers per item from one model (MEG, IG, sampled)."""
    from amp_ray.generation.experts import ModelCandidates

    kwargs = _common(generation, name, uri, initial_rank, storage, seed)
    kwargs["load"] = load  # models.<name>'s (registry.load_options)
    return ModelCandidates, {**kwargs, "generator": method}


def bdhs_candidates(
    generation: GenerationSpec,
    name: str,
    uri: str,
    initial_rank: int,
    storage: Any,
    seed: int,
    load: LoadOptions = LoadOptions(),
) -> tuple[type, dict[str, Any]]:
    """One candidate per hiding threshold of generation.bdhs from the policy `name`."""
    from amp_ray.generation.bdhs import BdhsCandidates

    kwargs = _common(generation, name, uri, initial_rank, storage, seed)
    kwargs["load"] = load  # models.<name>'s (registry.load_options)
    return BdhsCandidates, {**kwargs, "bdhs": generation.bdhs}


def _common(
    generation: GenerationSpec, name: str, uri: str, initial_rank: int, storage: Any, seed: int
) -> dict[str, Any]:
    """What every candidate generator is built with."""
    return {
        "model_name": name,
        "model_path": uri,
        "initial_rank": initial_rank,
        "sampling": generation.sampling,
        "num_cpus": generation.actors.num_cpus,
        "storage": storage,
        "seed": seed,
    }
