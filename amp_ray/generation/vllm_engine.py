"""vLLM as the engine that answers, inside a Ray Data actor (generation.engine: vllm).

One `vllm.LLM` per actor, in the actor's own process, answers dialogues round by round with its
own earlier answers as history, as models/decoding.answer_dialogues does with HF `generate`: the
prompt of each round is the chat template's text of the conversation so far, which vLLM tokenizes
and expands around the image exactly as the family's HF processor does (the prompt token ids are
the same, and greedy answers equal HF's: tests/test_vllm_engine.py). The engine lives in the
actor rather than in `ray.data.llm`'s processor stages because round t+1's prompt needs round t's
answer: as processor stages, a T-round dialogue would take T engine pools, T times the GPUs.

The actors start from the Python of the vLLM environment (spec/engines.py), so this module is
imported there with vLLM's own transformers; it imports vLLM only inside the actor.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from amp_ray.errors import AmpRayError, SpecError
from amp_ray.models.conversation import messages_for
from amp_ray.models.decoding import Generated, by_rounds
from amp_ray.models.registry import ActorModel
from amp_ray.spec.alignment import SamplingSpec
from amp_ray.spec.engines import ACTOR_ENV, VllmSpec

# the families whose checkpoints vLLM loads (its model registry), by config model_type
VLLM_MODEL_TYPES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3")


class VllmEngine:
    """One model on a vLLM engine: answers dialogues round by round (greedy or sampled)."""

    name = "vllm"

    def __init__(self, model: ActorModel, vllm: VllmSpec, seed: int) -> None:
        for key, value in ACTOR_ENV.items():
            os.environ.setdefault(key, value)
        from vllm import LLM

        from amp_ray.models.processors import stored_processor
        from amp_ray.models.store import local_model_path

        path = local_model_path(model.uri, model.storage)
        self.processor = stored_processor(model.uri, model.storage, model.load.trust_remote_code)
        self.llm = LLM(
            model=path,
            dtype=model.load.dtype,
            seed=seed,
            trust_remote_code=model.load.trust_remote_code,
            tensor_parallel_size=vllm.tensor_parallel_size,
            gpu_memory_utilization=vllm.gpu_memory_utilization,
            max_model_len=vllm.max_model_len,
            enforce_eager=vllm.enforce_eager,
            **vllm.engine_kwargs,
        )
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def answer_dialogues(
        self,
        images: Sequence[Image.Image],
        dialogues: Sequence[Sequence[str]],
        sampling: SamplingSpec,
        seeds: Sequence[int],
    ) -> list[list[Generated]]:
        """Every round of every dialogue, batched across dialogues round by round; dialogue i
        samples with seed seeds[i] (reproducible whatever else shares the engine)."""

        def answer_round(
            active: list[int], t: int, answers: list[list[Generated]]
        ) -> list[Generated]:
            prompts = [self.prompt(images[i], dialogues[i][: t + 1], answers[i]) for i in active]
            params = [sampling_params(sampling, seeds[i] + t) for i in active]
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            done = [output.outputs[0] for output in outputs]
            return [
                Generated(d.text.strip(), d.finish_reason == "stop", len(d.token_ids)) for d in done
            ]

        return by_rounds(dialogues, answer_round)

    def prompt(
        self, image: Image.Image, questions: Sequence[str], answers: Sequence[Generated]
    ) -> dict[str, Any]:
        messages = messages_for(questions, [answer.text for answer in answers])
        text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return {"prompt": text, "multi_modal_data": {"image": image}}


def sampling_params(sampling: SamplingSpec, seed: int) -> Any:
    """vLLM's SamplingParams for a SamplingSpec (spec/engines.py refuses what has none)."""
    from vllm import SamplingParams

    common = {
        "max_tokens": sampling.max_new_tokens,
        "repetition_penalty": sampling.repetition_penalty,
        "skip_special_tokens": True,
    }
    if not sampling.do_sample:
        return SamplingParams(temperature=0.0, **common)
    return SamplingParams(
        temperature=sampling.temperature, top_p=sampling.top_p, seed=seed, **common
    )


def check_vllm_environment(vllm: VllmSpec, block: str) -> str:
    """The vLLM and Ray versions of the pool's Python, or a SpecError naming the fix: checked on
    the driver before any generation starts."""
    import ray

    python = os.path.expanduser(vllm.python) if vllm.python else sys.executable
    fix = f"make vllm-env, then set {block}.vllm.python: .venv-vllm/bin/python (docs/cluster.md)"
    try:
        returncode, stdout, stderr = _probe(python)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpecError(f"{block}.vllm.python {python!r} does not run ({exc})", hint=fix) from None
    if returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise SpecError(f"{block}.vllm.python {python!r} cannot import vLLM: {last}", hint=fix)
    vllm_version, ray_version = stdout.split()[-2:]
    if ray_version != ray.__version__:
        raise SpecError(
            f"{block}.vllm.python has ray {ray_version}, the driver ray {ray.__version__}: "
            "Ray's workers must run the driver's version",
            hint=fix,
        )
    return vllm_version


@functools.cache
def _probe(python: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of importing vLLM, Ray and amp-ray in `python`, once per
    driver: several stages (generate, train's online rounds, evaluate) check the same one, and
    importing vLLM takes seconds."""
    probe = "import vllm, ray, amp_ray; print(vllm.__version__, ray.__version__)"
    env = {**os.environ, **ACTOR_ENV}
    done = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, timeout=300, env=env
    )
    return done.returncode, done.stdout, done.stderr


def check_vllm_models(models: dict[str, str], storage: Any = None) -> None:
    """`check_vllm_model` for every model (name -> URI) a vLLM pool is to load."""
    from amp_ray.models.store import local_model_path

    for name, uri in models.items():
        check_vllm_model(name, local_model_path(uri, storage))


def check_vllm_model(name: str, path: str) -> None:
    """Refuse, before any generation, a model vLLM cannot load: a family its registry lacks, or
    LLaVA weights in transformers 5's own key layout (`vision_tower.embeddings.*`; vLLM wants
    the published `vision_tower.vision_model.*`, which models/loading.save_model writes)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return  # a hub id: vLLM resolves it, and says itself what it cannot load
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type not in VLLM_MODEL_TYPES:
        raise AmpRayError(
            f"model {name} is a {model_type!r} checkpoint, which amp-ray does not run on vLLM "
            f"({', '.join(VLLM_MODEL_TYPES)})",
            hint="set generation.engine: hf",
        )
    keys = _weight_names(folder)
    if model_type.startswith("llava") and any(".vision_tower.embeddings." in f".{k}" for k in keys):
        raise AmpRayError(
            f"model {name} at {path} keeps its weights in transformers 5's own layout "
            "(vision_tower.embeddings.*), which vLLM's loader refuses",
            hint="re-save it with amp_ray.models.loading.save_model (the published layout), "
            "or set generation.engine: hf",
        )


def _weight_names(folder: Path) -> list[str]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    names: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            names += [k for k in json.loads(handle.read(size)) if k != "__metadata__"]
    return names
