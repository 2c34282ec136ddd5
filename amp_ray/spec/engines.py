"""Which engine generates: Hugging Face `generate` in the actors (hf, every family, every
setting) or vLLM engines in the actors (vllm: continuous batching and paged attention on GPUs).

The vLLM engine runs inside the pool's Ray Data actors (generation/vllm_engine.py), started from
the Python of an environment that has vLLM (`vllm.python`; `make vllm-env` builds one), because
vLLM pins its own transformers and torch. Every node that runs such a pool needs that
environment at the same path, as a cluster image provides it. docs/cluster.md has a GPU spec.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from amp_ray.spec.blocks import Block, PositiveInt, Probability

Engine = Literal["hf", "vllm"]
# vLLM's engine core in the actor's process: its default, a spawned process, re-imports the
# main module, which in a Ray worker is Ray's own
ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


class VllmSpec(Block):
    """How vLLM engines run in a pool whose engine is vllm (vllm.LLM's arguments)."""

    python: str | None = Field(
        None,
        description="the Python of an environment with vLLM and this ray (make vllm-env: "
        ".venv-vllm/bin/python), the same path on every node; default: the driver's own",
    )
    tensor_parallel_size: PositiveInt = Field(
        1, description="GPUs one engine spans: the pool's actors.num_gpus must equal it"
    )
    gpu_memory_utilization: Probability = 0.9
    max_model_len: PositiveInt | None = Field(None, description="default: the model's")
    enforce_eager: bool = Field(False, description="no CUDA graphs (faster start, slower decode)")
    engine_kwargs: dict[str, Any] = Field(
        {}, description="other vllm.LLM arguments, passed as they are"
    )

    def runtime_env(self) -> dict[str, Any]:
        """The Ray runtime_env of the pool's actors: the vLLM environment's Python
        (runtime.map_with_actor_pool gives it to every pool built with these settings)."""
        env: dict[str, Any] = {"env_vars": dict(ACTOR_ENV)}
        if self.python:
            env["py_executable"] = self.python
        return env


def vllm_sampling_problem(sampling: Any, where: str) -> str | None:
    """Why vLLM cannot decode as the SamplingSpec `sampling` says (None where it can)."""
    if sampling.num_beams > 1:
        return (
            f"{where}.num_beams {sampling.num_beams}: vLLM's engines sample or decode greedily, "
            f"without beams; set {where}.num_beams: 1, or engine: hf"
        )
    if sampling.no_repeat_ngram_size:
        return (
            f"{where}.no_repeat_ngram_size {sampling.no_repeat_ngram_size}: vLLM has no n-gram "
            f"blocking; set it to 0, or engine: hf"
        )
    return None


def check_vllm_pool(sampling: Any, actors: Any, vllm: VllmSpec, block: str, key: str) -> None:
    """Refuse, at validation, a vllm pool that vLLM cannot run as the spec says (`key`: the
    block's SamplingSpec, e.g. generation.sampling)."""
    problem = vllm_sampling_problem(sampling, f"{block}.{key}")
    if problem:
        raise ValueError(problem)
    if actors.num_gpus and actors.num_gpus != vllm.tensor_parallel_size:
        raise ValueError(
            f"{block}.actors.num_gpus {actors.num_gpus} differs from "
            f"{block}.vllm.tensor_parallel_size {vllm.tensor_parallel_size}: an engine takes "
            "the GPUs of its actor; set both to the GPUs one engine spans"
        )
