"""Spec blocks of the alignment stages: generation, ranking, reference, training, sweep, evaluation.

Defaults follow the papers (AMP arXiv 2405.11165, BDHS arXiv 2407.02477); docs/methods.md.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from amp_ray.losses.table import LOSSES, LossKind
from amp_ray.spec.blocks import (
    ActorPoolSpec,
    Batching,
    Block,
    DeepSpeedSpec,
    LoraSpec,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerSpec,
    PositiveFloat,
    PositiveInt,
    Probability,
    ScalingSpec,
    ScheduleSpec,
    WorldCheckSpec,
)
from amp_ray.spec.engines import Engine, VllmSpec, check_vllm_pool

NumLevels = Annotated[int, Field(ge=2, le=8)]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # names that are path segments


class SamplingSpec(Block):
    """Decoding parameters (AMP's generation: beams 4, temperature 0.7, repetition penalty 1.1)."""

    max_new_tokens: PositiveInt = 512
    do_sample: bool = True
    temperature: PositiveFloat = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    num_beams: PositiveInt = 4
    repetition_penalty: PositiveFloat = 1.1
    no_repeat_ngram_size: NonNegativeInt = 0
    num_samples: PositiveInt = Field(1, description="candidates drawn per model and item")


class EvalDecodingSpec(SamplingSpec):
    """MRHal-Bench's decoding: greedy, 4 beams, no repeated 5-grams. Defaults of their own, so
    that a spec that sets only max_new_tokens keeps them (it got SamplingSpec's sampling before)."""

    do_sample: bool = False
    temperature: PositiveFloat = 1.0
    repetition_penalty: PositiveFloat = 1.0
    no_repeat_ngram_size: NonNegativeInt = 5


class MegSpec(Block):
    """Multi-size expert generation: one family, several sizes; initial rank larger > smaller."""

    experts: list[str] = Field([], description="model names, largest first")


class IgSpec(Block):
    """Incremental generation: one base tuned on nested subsets; most data first, untuned last."""

    checkpoints: list[str] = Field([], description="model names, most data first")


class BdhsSpec(Block):
    """Bias-driven hallucination sampling (2407.02477 §3.4): rejected answers from hidden images."""

    model: str | None = Field(None, description="policy that completes; default training.policy")
    rho_th: list[Probability] = Field(
        [0.99], description="hiding thresholds; several give graded levels (multi-level BDHS)"
    )
    similarity_threshold: Probability = 0.97
    max_tries: PositiveInt = 5
    flip_yes_no: Probability = 0.5
    encoder: str = "all-MiniLM-L6-v2"
    engine: Literal["hf"] = Field("hf", description="BDHS runs on hf whatever generation.engine")

    @field_validator("engine", mode="before")
    @classmethod
    def _hf_only(cls, engine: Any) -> Any:
        if engine != "hf":
            raise ValueError(
                f"engine {engine!r}: BDHS hides image tokens through the attention mask, which "
                "vLLM's engines do not take, so it runs on hf (generation.engine: vllm still "
                "runs meg and ig on vLLM); remove generation.bdhs.engine"
            )
        return engine


GeneratorName = Literal["meg", "ig", "bdhs"]


class GenerationSpec(Block):
    """Candidate answers for every item of `splits`, by each generator in `methods` (AMP §3.1,
    BDHS §3.4). Each model runs in its own Ray Data actor pool of shape `actors`."""

    methods: list[GeneratorName] = []
    splits: list[str] = Field(["preference"], description="item splits to generate for")
    meg: MegSpec = MegSpec()
    ig: IgSpec = IgSpec()
    bdhs: BdhsSpec = BdhsSpec()
    sampling: SamplingSpec = SamplingSpec()
    actors: ActorPoolSpec = ActorPoolSpec()
    engine: Engine = Field("hf", description="what answers for meg and ig (bdhs: always hf)")
    vllm: VllmSpec = VllmSpec()

    @model_validator(mode="after")
    def _each_method_has_models(self) -> GenerationSpec:
        if self.engine == "vllm":
            check_vllm_pool(self.sampling, self.actors, self.vllm, "generation", "sampling")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} lists a generator twice")
        if "meg" in self.methods and not self.meg.experts:
            raise ValueError("method meg needs meg.experts (model names, largest first)")
        if "ig" in self.methods and not self.ig.checkpoints:
            raise ValueError("method ig needs ig.checkpoints (model names, most data first)")
        if "bdhs" in self.methods and not self.bdhs.rho_th:
            raise ValueError("method bdhs needs at least one bdhs.rho_th")
        return self


class RankingSpec(Block):
    """Auto-check re-ranking of the candidates against the reference (AMP §3.1, App. A)."""

    checker: Literal["embedding", "ground_truth"] = "embedding"
    num_levels: NumLevels = 4
    tau: Probability = 0.85
    encoder: str = "all-MiniLM-L6-v2"
    actors: ActorPoolSpec = ActorPoolSpec()


class ReferenceSpec(Block):
    """Reference log-probs, scored once before training so training never runs the reference."""

    model: str | None = Field(None, description="default: the training policy's starting model")
    micro_batch_size: PositiveInt = Field(8, description="sequences per scoring forward")
    actors: ActorPoolSpec = ActorPoolSpec()


class PenaltySpec(Block):
    """MDPO's penalty −λ·r(y_0) on pairs whose chosen side is the best response."""

    weight: NonNegativeFloat = 1.0
    length_normalise: bool = False
    spread_over_pairs: bool = Field(
        False, description="weight/(K-1) per pair: equal total penalty for every K"
    )


# the names of losses/table.py, checked by pydantic (the table has each loss's rules)
LossName = Literal[tuple(LOSSES)]  # type: ignore[valid-type]


class CompareSpec(Block):
    """Other recipes trained beside the training block's own, on the same items from the same
    policy, for the before/after table. Each arm overrides keys of the training block; every
    arm trains once per seed, and arms of one seed see the items in the same order. On the
    synthetic world the seed-to-seed spread is larger than the gaps between methods, so the
    table reports mean ± sd over seeds and each arm's difference to `control`, paired by seed
    (docs/world.md)."""

    arms: dict[str, dict[str, Any]] = Field(
        {}, description="arm name -> overrides of training keys, e.g. {loss: dpo, levels: [0, 3]}"
    )
    seeds: list[NonNegativeInt] = Field([0], min_length=1, description="one run per arm and seed")
    control: str | None = Field(None, description="the arm the others are compared with")
    equal_time: bool = Field(
        True, description="also train every other arm for the training block's own wall time"
    )
    max_concurrent_runs: PositiveInt = Field(
        1, description="runs trained side by side (each with its own Ray Train workers)"
    )


class OnlineSpec(Block):
    """Online and mixed alignment rounds after the offline runs (2407.02477 §2, §5;
    docs/methods.md). Round r = 1..rounds makes new rejected answers with the current policy
    (round 1: training.policy, then round r−1's model), ranks them with ranking.checker, scores
    them with the fixed reference, and trains `steps_per_round` steps from the current weights:
    DPO on [y+, ỹ−], or with `mix_offline` Mixed-DPO on [y+, offline y−, online ỹ−], where y−
    is the item's worst offline level. β, optimizer, schedule, LoRA and the rest come from the
    training block; neither loss has MDPO's penalty, so `penalty` does not apply. Each round is
    its own run (a fresh optimizer and schedule), as in iterative online DPO."""

    rounds: NonNegativeInt = Field(0, description="online rounds after the offline runs; 0: none")
    steps_per_round: PositiveInt = Field(100, description="optimizer steps of each round")
    generator: Literal["bdhs", "sampled"] = Field(
        "bdhs",
        description="bdhs: the policy completes the reference with the image hidden "
        "(generation.bdhs); sampled: generation.sampling.num_samples answers of the policy",
    )
    mix_offline: bool = Field(
        False, description="Mixed-DPO with each item's worst offline level as the offline y−"
    )
    items_per_round: PositiveInt | None = Field(
        None, description="a stable subset of the preference items per round, new each round"
    )

    @model_validator(mode="after")
    def _mixing_needs_rounds(self) -> OnlineSpec:
        if self.rounds == 0 and self.mix_offline:
            raise ValueError("mix_offline mixes offline and online pairs: it needs rounds >= 1")
        return self

    @property
    def num_levels(self) -> int:
        """Levels of an online item: [y+, ỹ−], or [y+, y−, ỹ−] when mixing."""
        return 3 if self.mix_offline else 2


class TrainingSpec(Block):
    """Preference training on Ray Train + DeepSpeed (AMP §3.2–3.3 and its public code)."""

    policy: str | None = Field(None, description="model name to start from")
    loss: LossName = "mdpo"
    beta: PositiveFloat = 0.1
    num_levels: NumLevels = Field(4, description="levels per item in the data (checked)")
    levels: list[NonNegativeInt] | None = Field(
        None, description="the data levels to train on, best first; default all (DPO: [0, K-1])"
    )
    penalty: PenaltySpec = PenaltySpec()
    gamma: Probability = Field(0.5, description="Avg-DPO's weight on the offline pair")
    reference: Literal["precomputed", "in_loop"] = Field(
        "precomputed", description="read ref_logps from the reference stage, or run the reference"
    )
    forward: Literal["shared_prefix", "full"] = Field(
        "shared_prefix", description="one image prefix for the K levels, or K full sequences"
    )
    round_weight_step: NonNegativeFloat = Field(
        0.0, description="dialogue round t's log-ratio weighs 1 + step·t (AMP's code: 0.05)"
    )
    dialogue_pairs: Literal["whole", "differing_rounds", "first_difference"] = Field(
        "whole",
        description="which rounds of two levels of a dialogue their pair compares: every round "
        "(AMP), the rounds they answer differently, or the first such round alone, after the "
        "history the two share (docs/methods.md)",
    )
    sft_weight: NonNegativeFloat = Field(
        0.0,
        description="adds weight x the control's loss, the per-token NLL of level 0 over every "
        "round (TRL's rpo_alpha); 0: none",
    )
    max_steps: PositiveInt = 3_000
    micro_batch_size: PositiveInt = 4
    batching: Batching = Field(
        "by_length",
        description="how items become global batches; by_length pads least (a K-level item "
        "pads every level to its longest)",
    )
    gradient_accumulation_steps: PositiveInt = 4
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    max_grad_norm: PositiveFloat = 0.3
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    reference_dtype_mismatch: Literal["refuse", "allow"] = Field(
        "refuse",
        description="train against reference log-probs scored in another dtype than the policy's",
    )
    gradient_checkpointing: bool = False
    freeze_vision: bool = True
    lora: LoraSpec | None = None
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    scaling: ScalingSpec = ScalingSpec()
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 10
    max_length: PositiveInt = 2048
    encode_actors: ActorPoolSpec = ActorPoolSpec(batch_size=64)
    input_cpus: PositiveFloat = Field(
        0.25, description="CPUs of each task that makes pixel inputs in the workers' pipelines"
    )
    compare: CompareSpec = CompareSpec()
    online: OnlineSpec = OnlineSpec()
    eval: WorldCheckSpec = Field(
        WorldCheckSpec(), description="the world check of the policy before and after training"
    )
    name: str = Field(
        "aligned",
        pattern=NAME_PATTERN.pattern,
        description="the trained model's name (train/models/<name>)",
    )

    @property
    def trained_levels(self) -> list[int]:
        return self.levels if self.levels is not None else list(range(self.num_levels))

    @property
    def loss_kind(self) -> LossKind:
        return LOSSES[self.loss]

    @property
    def read_levels(self) -> list[int]:
        """The data levels the loop reads: a best-only loss (the continued-SFT control) y_0."""
        return self.trained_levels[:1] if self.loss_kind.best_only else self.trained_levels

    @property
    def reads_stored_reference(self) -> bool:
        """Trains against the reference stage's stored log-probs (not scored in the loop)."""
        return self.loss_kind.needs_reference and self.reference == "precomputed"

    @model_validator(mode="after")
    def _levels_fit_the_loss(self) -> TrainingSpec:
        levels = self.trained_levels
        if len(set(levels)) != len(levels) or levels != sorted(levels):
            raise ValueError(f"levels {levels} must be distinct and best first (increasing)")
        if max(levels) >= self.num_levels or len(levels) < 2:
            raise ValueError(
                f"levels {levels} must name at least 2 of the data's num_levels "
                f"{self.num_levels} levels (0 .. {self.num_levels - 1})"
            )
        wanted = self.loss_kind.levels
        if wanted is not None and len(levels) != wanted:
            hint = f"; for example levels: [0, {self.num_levels - 1}]" if wanted == 2 else ""
            raise ValueError(
                f"loss {self.loss} takes {wanted} levels per item, training on {len(levels)}{hint}"
            )
        if self.lora is not None and self.deepspeed.zero_stage == 3:
            raise ValueError("lora with deepspeed.zero_stage 3 is not supported: use stage 2")
        quantized = self.lora is not None and self.lora.quantize_base is not None
        if quantized and self.reads_stored_reference:
            # the reference stage scores the unquantized model: at step 0 the margins would be
            # the quantization error, not 0 (the same reason as reference_dtype_mismatch)
            raise ValueError(
                "lora.quantize_base needs reference: in_loop (the reference is then the "
                "quantized base under the adapters, as in QLoRA DPO)"
            )
        return self

    @model_validator(mode="after")
    def _arms_are_recipes(self) -> TrainingSpec:
        compare = self.compare
        for arm, overrides in compare.arms.items():
            if arm == self.name or not NAME_PATTERN.match(arm):
                raise ValueError(
                    f"compare.arms.{arm}: an arm needs a name of its own (letters, digits, "
                    f"._-), other than training.name {self.name!r}"
                )
            if {"compare", "name", "policy", "eval", "online"} & set(overrides):
                raise ValueError(
                    f"compare.arms.{arm}: compare, name, policy, eval and online are the same "
                    "for every arm"
                )
            if arm == self.online_arm:
                raise ValueError(f"compare.arms.{arm}: the online rounds' arm has this name")
            self.arm(arm)  # validates the overrides as a training block
        if compare.control is not None and compare.control not in compare.arms:
            raise ValueError(
                f"compare.control {compare.control!r} is not one of compare.arms "
                f"{sorted(compare.arms)}"
            )
        return self

    def arm(self, name: str) -> TrainingSpec:
        """The training block with arm `name`'s overrides (nested keys merge)."""
        if name == self.name:
            return self
        base = self.model_dump(exclude={"compare", "online"})
        try:
            return TrainingSpec(**merged(base, self.compare.arms[name]))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'training'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"compare.arms.{name}: {problems}") from None

    @property
    def online_arm(self) -> str:
        """The arm name of the online rounds' models in train/runs."""
        return f"{self.name}-online"

    def online_recipe(self) -> TrainingSpec:
        """The training block one online round trains with: DPO on levels [0, 1], or Mixed-DPO
        on [0, 1, 2], for `online.steps_per_round` steps; everything else is this block's."""
        mixed = self.online.mix_offline
        overrides = {
            "loss": "mixed_dpo" if mixed else "dpo",
            "num_levels": self.online.num_levels,
            "levels": None,
            "max_steps": self.online.steps_per_round,
            "name": self.online_arm,
        }
        return TrainingSpec(**merged(self.model_dump(exclude={"compare", "online"}), overrides))


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; dicts merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


class SweepSpec(Block):
    """A Ray Tune sweep: each trial trains and evaluates the spec with some keys overridden.

    `parameters` maps a dotted spec path to the values it takes; the trials are the grid of all
    of them, each at `num_seeds` training seeds. Paths joined by commas move together: the key
    `training.loss,training.levels` with values `[[mdpo, [0, 1, 2, 3]], [dpo, [0, 3]]]` is two
    points, not four. A trial reuses the run's stages its overrides leave unchanged and runs the
    rest, then train and evaluate, in sweep/trials/<trial>/."""

    parameters: dict[str, list[Any]] = Field(
        {}, description="dotted spec path (or comma-joined paths) -> values; the grid of them"
    )
    num_seeds: PositiveInt = Field(1, description="each point trains at this many seeds")
    metric: str = Field(
        "mrhal/hallucination_rate_cumulative",
        pattern=r"^[^/\s]+(/[^/\s]+)?/[^/\s]+$",
        description="benchmark/metric (mean over its splits, by item count) or "
        "benchmark/split/metric of evaluate/metrics; the best point is chosen by it",
    )
    mode: Literal["min", "max"] = "min"
    max_concurrent_trials: PositiveInt = 2
    share_cpus: bool = Field(
        True,
        description="divide each trial's CPU requests (train workers, actor pools) by the "
        "trials running at once, so that they fit where one run did (two on 2 CPUs); GPU "
        "requests are kept: on a cluster each trial gets training.scaling's GPUs",
    )

    @model_validator(mode="after")
    def _non_empty_grids(self) -> SweepSpec:
        for key, values in self.parameters.items():
            paths = key.split(",")
            if not values:
                raise ValueError(f"sweep.parameters[{key!r}] has no values")
            if any(not path.strip() or path.split(".")[0] in UNSWEPT for path in paths):
                raise ValueError(
                    f"sweep.parameters[{key!r}]: {', '.join(sorted(UNSWEPT))} cannot be swept"
                )
            if len(paths) > 1 and any(
                not isinstance(v, list) or len(v) != len(paths) for v in values
            ):
                raise ValueError(
                    f"sweep.parameters[{key!r}] joins {len(paths)} paths: each value must be a "
                    f"list of {len(paths)} values, one per path"
                )
        return self

    def points(self) -> list[dict[str, Any]]:
        """The grid: one dict of dotted path -> value per point, in a stable order."""
        keys = list(self.parameters)
        out = []
        for values in itertools.product(*(self.parameters[k] for k in keys)):
            point: dict[str, Any] = {}
            for key, value in zip(keys, values, strict=True):
                paths = [p.strip() for p in key.split(",")]
                point.update(zip(paths, value if len(paths) > 1 else [value], strict=True))
            out.append(point)
        return out


# keys a trial cannot change: they say what the run is and where it lives
UNSWEPT = frozenset({"sweep", "storage", "stages", "name", "resources"})

Benchmark = Literal["chair", "pope", "mrhal", "mmhal"]


class JudgeSpec(Block):
    """Who rates open answers: the world's ground truth, or an LLM over an OpenAI-compatible API."""

    kind: Literal["ground_truth", "openai"] = "ground_truth"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the key")
    max_retries: NonNegativeInt = 3
    requests_per_minute: PositiveInt = 60
    timeout_s: PositiveFloat = 60.0
    cache_dir: str | None = Field(
        None,
        description="directory of cached judgments (one JSON file per item); "
        "default: $XDG_CACHE_HOME/amp_ray/judge, else ~/.cache/amp_ray/judge",
    )

    prompt_file: dict[Literal["mrhal", "mmhal"], str] = Field(
        default_factory=dict,
        description="benchmark -> the release's judge script (.py) or a template file, local or "
        "s3 (evaluation/judge_prompt.py); default: the built-in prompts",
    )
    prompt_variable: str = Field(
        "template", description="the variable a judge script assigns its template to"
    )

    @model_validator(mode="after")
    def _endpoint_for_llm(self) -> JudgeSpec:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("an openai judge needs base_url and model")
        if self.kind == "ground_truth" and self.prompt_file:
            raise ValueError("prompt_file is for an openai judge; the ground_truth judge has none")
        return self


class BenchmarkFileSpec(Block):
    """A published benchmark file (layouts: amp_ray/evaluation/benchmarks.py): MRHal-Bench's
    eval_gt.json, MMHal-Bench's JSON, or POPE's JSONL (a labelled file, a directory of
    coco_pope_<category>.json, or a questions file with `labels`)."""

    path: str = Field(description="local path or s3:// URI")
    image_root: str | None = Field(None, description="folder the records' image names are in")
    labels: str | None = Field(None, description="POPE only: the labels file or folder")


class EvaluationSpec(Block):
    """Hallucination benchmarks (MRHal-Bench protocol by default: greedy, beams 4, no-repeat 5).

    A benchmark with an entry in `files` runs on that file; one without runs on the world's eval
    splits (world data only): chair on captions, pope on existence questions, mrhal on the
    multi-round dialogues, mmhal on each dialogue's second question asked alone."""

    benchmarks: list[Benchmark] = ["chair", "pope", "mrhal", "mmhal"]
    files: dict[Benchmark, BenchmarkFileSpec] = {}
    models: list[str] = Field(
        [], description="model names (trained ones too); default: every model the run made"
    )
    decoding: EvalDecodingSpec = EvalDecodingSpec()
    items_per_split: PositiveInt | None = Field(
        None, description="world images per eval split, all their items (default: all)"
    )
    mrhal_mean_rate: Literal["rounds", "dialogue"] = Field(
        "rounds",
        description="hallucination_rate_mean: share of a dialogue's rounds (the definition) or "
        "the public script's rule (a dialogue hallucinates when its mean rating is below 3)",
    )
    judge: JudgeSpec = JudgeSpec()
    actors: ActorPoolSpec = ActorPoolSpec()
    judge_actors: ActorPoolSpec = ActorPoolSpec(num_actors=1, num_cpus=0.25, batch_size=16)
    engine: Engine = Field("hf", description="what answers (vllm: decoding without beams)")
    vllm: VllmSpec = VllmSpec()

    @model_validator(mode="after")
    def _files_name_their_benchmarks(self) -> EvaluationSpec:
        if self.engine == "vllm":
            check_vllm_pool(self.decoding, self.actors, self.vllm, "evaluation", "decoding")
        if "chair" in self.files:
            raise ValueError(
                "evaluation.files.chair: CHAIR needs per-image object annotations and runs on "
                "the world's captions only; remove the entry"
            )
        missing = sorted(set(self.files) - set(self.benchmarks))
        if missing:
            raise ValueError(f"evaluation.files has {missing}, which benchmarks does not list")
        return self
