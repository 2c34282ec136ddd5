"""The candidate generators' actor pools, built by keyword in one place for the generate stage
and the online rounds: (callable class, constructor keyword arguments) for map_with_actor_pool."""

from __future__ import annotations

from typing import Any

from amp_ray.models.registry import ActorModel
from amp_ray.spec.alignment import GenerationSpec


def model_candidates(
    generation: GenerationSpec, method: str, model: ActorModel, initial_rank: int, seed: int
) -> tuple[type, dict[str, Any]]:
    """`generation.sampling.num_samples` answers per item from one model (MEG, IG, sampled), on
    the engine `generation.engine` names."""
    from amp_ray.generation.experts import ModelCandidates

    return ModelCandidates, {
        "model": model,
        "generator": method,
        "initial_rank": initial_rank,
        "sampling": generation.sampling,
        "seed": seed,
        "vllm": generation.vllm if generation.engine == "vllm" else None,
    }


def bdhs_candidates(
    generation: GenerationSpec, model: ActorModel, initial_rank: int, seed: int
) -> tuple[type, dict[str, Any]]:
    """One candidate per hiding threshold of generation.bdhs from the policy `model`."""
    from amp_ray.generation.bdhs import BdhsCandidates

    return BdhsCandidates, {
        "model": model,
        "bdhs": generation.bdhs,
        "sampling": generation.sampling,
        "initial_rank": initial_rank,
        "seed": seed,
    }
