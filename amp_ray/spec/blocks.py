"""The blocks of a job spec, one typed model per stage concern.

Defaults are the papers' (docs/methods.md cites them); the shipped specs under jobs/ set the
values for the synthetic world. Every block rejects unknown keys, so a typo never passes silently.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Block(BaseModel):
    """Base of every spec block: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def walk_blocks(model: BaseModel, prefix: str = "") -> list[tuple[str, BaseModel]]:
    """(dotted path, block) of every block nested in `model`, depth first."""
    out: list[tuple[str, BaseModel]] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            path = f"{prefix}{name}"
            out += [(path, value), *walk_blocks(value, f"{path}.")]
    return out


# --- where things live and run ---------------------------------------------------------------


class StorageSpec(Block):
    """The run directory: every stage's Parquet datasets and checkpoints live under it."""

    run_dir: str = Field(description="local path or s3://bucket/prefix")
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto); default: AWS or $AWS_ENDPOINT_URL"
    )
    region: str | None = None
    profile: str | None = Field(None, description="AWS profile name from ~/.aws/config")
    anonymous: bool = Field(False, description="unsigned S3 access (public buckets)")
    shared: bool = Field(
        False,
        description="a local run_dir that every node of a multi-node cluster mounts (NFS, "
        "EFS, Filestore); without it a local run_dir is refused on more than one node",
    )


class ResourcesSpec(Block):
    """Size of the local Ray started when no cluster is given (ignored when joining a cluster)."""

    num_cpus: PositiveInt | None = Field(None, description="logical CPUs; default: the machine's")
    num_gpus: NonNegativeInt | None = Field(None, description="default: the machine's")
    object_store_memory_gb: PositiveFloat | None = None


class RuntimeSpec(Block):
    """How the job meets a cluster that grows: waiting for the autoscaler, and its node types."""

    resource_wait_s: NonNegativeFloat = Field(
        900,
        description="seconds a stage waits for an autoscaling cluster to add the nodes it asks "
        "for, then stops with an error naming them",
    )
    cluster_config: str | None = Field(
        None,
        description="the cluster launcher YAML whose node types the job may use; default: the "
        "one the head's autoscaler runs with (ray up's ~/ray_bootstrap_config.yaml)",
    )
    data_object_store_gb: PositiveFloat | None = Field(
        None,
        description="the object-store memory one Ray Data pipeline may fill with blocks in "
        "flight (a stage's encoding pass, each training worker's input stream); default: Ray "
        "Data's own budget, a share of the cluster's object store",
    )


class MlflowSpec(Block):
    """An MLflow tracking server that training runs log their metrics to."""

    tracking_uri: str = Field(description="e.g. http://mlflow.internal:5000 or databricks")
    experiment: str | None = Field(None, description="default: the job's name")


class TrackingSpec(Block):
    """What training runs show while they run (training/tracking.py)."""

    progress: bool = Field(True, description="a progress line per logged window")
    tensorboard: bool = Field(
        True, description="event files under <stage>/tensorboard/<run> in the run directory"
    )
    mlflow: MlflowSpec | None = Field(
        None, description="log to this MLflow server too (pip install amp-ray[tracking])"
    )


class NodeResources(Block):
    """Where work may be placed: Ray's accelerator types and custom node resources.

    `accelerator_type` is one of Ray's (ray.util.accelerators: "A100", "H100", "A10G", "L4", or a
    size-specific name such as "A100-80G" that the cluster YAML declares); `resources` asks for
    custom resources that only some node types have (e.g. {"big_disk": 1}).
    """

    accelerator_type: str | None = Field(
        None, description="GPU type the work needs, as Ray names it (e.g. A100-80G, H100)"
    )
    resources: dict[str, PositiveFloat] = Field(
        {}, description="custom node resources each actor or worker asks for"
    )

    def placement(self, num_cpus: float, num_gpus: float) -> dict[str, float]:
        """The resource bundle one actor or worker holds, as Ray's scheduler sees it."""
        bundle = {"CPU": num_cpus, **self.resources}
        if num_gpus:
            bundle["GPU"] = num_gpus
        if self.accelerator_type:
            # Ray turns accelerator_type=X into this resource (ray.util.accelerators)
            bundle[f"accelerator_type:{self.accelerator_type}"] = 0.001
        return bundle


class ActorPoolSpec(NodeResources):
    """An actor pool for a Ray Data model stage (generation, scoring, evaluation).

    `num_actors` is a fixed size or a range [min, max]: Ray Data starts `min` actors and adds
    more, up to `max`, as the cluster's autoscaler adds nodes. CPUs are fractional by default: on a
    2-CPU local Ray, two actors of num_cpus=1 leave no CPU for the read task and the pipeline
    hangs without an error.
    """

    num_actors: PositiveInt | tuple[PositiveInt, PositiveInt] = 1
    num_cpus: PositiveFloat = 0.5
    num_gpus: NonNegativeFloat = 0.0
    batch_size: PositiveInt = 16

    @model_validator(mode="after")
    def _ordered_range(self) -> ActorPoolSpec:
        if self.min_actors > self.max_actors:
            raise ValueError(f"num_actors {list(self.num_actors)} is not an ordered [min, max]")
        if self.accelerator_type and not self.num_gpus:
            raise ValueError("accelerator_type needs num_gpus > 0")
        return self

    @property
    def min_actors(self) -> int:
        return self.num_actors if isinstance(self.num_actors, int) else self.num_actors[0]

    @property
    def max_actors(self) -> int:
        return self.num_actors if isinstance(self.num_actors, int) else self.num_actors[1]

    @property
    def bundle(self) -> dict[str, float]:
        return self.placement(self.num_cpus, self.num_gpus)


# --- data ------------------------------------------------------------------------------------


class BiasSpec(Block):
    """The planted language prior: `trigger` appears with `partner` far more often than chance."""

    trigger: str = "circle"
    partner: str = "square"
    strength: Probability = Field(0.9, description="P(partner | trigger) in the biased splits")


class WorldSplitsSpec(Block):
    """Number of images per split of the synthetic world."""

    sft: NonNegativeInt = 20_000
    preference: NonNegativeInt = 2_000
    eval_iid: NonNegativeInt = 500
    eval_bias_probe: NonNegativeInt = 500
    eval_control: NonNegativeInt = 500
    validation: NonNegativeInt = Field(
        0,
        description="unbiased images with the eval splits' items, for choosing between recipes; "
        "evaluated beside the eval splits and kept out of the report's headline",
    )


Shape = Literal["circle", "square", "triangle", "cross", "ring", "diamond"]
Colour = Literal["red", "green", "blue", "yellow", "white", "orange", "purple", "cyan"]
WorldTask = Literal["caption", "existence", "attribute", "counting", "spatial", "dialogue"]


class WorldSpec(Block):
    """The embedded synthetic image world with exact ground truth (docs/world.md)."""

    seed: int = 0
    image_size: Annotated[int, Field(ge=16, le=512)] = 32
    kinds: list[Shape] = ["circle", "square", "triangle", "cross", "ring", "diamond"]
    colours: list[Colour] = ["red", "green", "blue", "yellow"]
    max_objects: Annotated[int, Field(ge=1, le=3)] = 3
    bias: BiasSpec = BiasSpec()
    splits: WorldSplitsSpec = WorldSplitsSpec()
    sft_tasks: dict[WorldTask, NonNegativeFloat] = Field(
        {
            "caption": 0.55,
            "existence": 0.15,
            "attribute": 0.1,
            "counting": 0.05,
            "spatial": 0.05,
            "dialogue": 0.1,
        },
        description="task mix of the sft split (weights); eval splits get every task",
    )
    preference_tasks: dict[WorldTask, NonNegativeFloat] = {"caption": 1.0}
    dialogue_rounds: tuple[PositiveInt, PositiveInt] = (2, 5)

    @model_validator(mode="after")
    def _check_vocabulary(self) -> WorldSpec:
        if len(set(self.kinds)) != len(self.kinds) or len(set(self.colours)) != len(self.colours):
            raise ValueError("kinds and colours must not repeat")
        if len(self.kinds) < self.max_objects + 1:
            raise ValueError(f"need at least max_objects + 1 = {self.max_objects + 1} kinds")
        for role, kind in (("trigger", self.bias.trigger), ("partner", self.bias.partner)):
            if kind not in self.kinds:
                raise ValueError(f"bias.{role} {kind!r} is not one of kinds {self.kinds}")
        if self.bias.trigger == self.bias.partner:
            raise ValueError("bias.trigger and bias.partner must differ")
        for name, mix in (
            ("sft_tasks", self.sft_tasks),
            ("preference_tasks", self.preference_tasks),
        ):
            if sum(mix.values()) <= 0:
                raise ValueError(f"{name} needs a positive weight")
        low, high = self.dialogue_rounds
        if low > high:
            raise ValueError(f"dialogue_rounds ({low}, {high}) is not an ordered range")
        return self


# Where items come from. The preference formats (docs/formats.md) also carry ranked responses:
# they become data/preferences besides data/items, and the rank stage is not needed.
DataSource = Literal["world", "parquet", "amp_json", "trl_dpo", "pairs"]
PREFERENCE_SOURCES = ("amp_json", "trl_dpo", "pairs")


class DataSpec(Block):
    """Where the items (images, prompts or dialogues, references) of the run come from."""

    source: DataSource = Field(
        "world",
        description="world: the embedded synthetic world; parquet: items in run format; "
        "amp_json, trl_dpo, pairs: preference data (docs/formats.md)",
    )
    path: str | None = Field(None, description="file or directory (local or s3://) to import")
    image_root: str | None = Field(
        None, description="folder that relative image paths are read from; default: path's folder"
    )
    world: WorldSpec = WorldSpec()
    actors: ActorPoolSpec = ActorPoolSpec(num_actors=2, batch_size=256)

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataSpec:
        if self.source != "world" and not self.path:
            raise ValueError(f"`path` is required when `source` is {self.source!r}")
        if self.source == "world" and self.path:
            raise ValueError("`path` is only read for imports; remove it or change `source`")
        return self


# --- models ----------------------------------------------------------------------------------


class TinyLlavaSpec(Block):
    """A LLaVA architecture (CLIP vision + Llama text) built from config, trained from scratch."""

    image_size: PositiveInt | None = Field(None, description="default: the world's image size")
    patch_size: PositiveInt = 8
    vision_hidden: PositiveInt = 64
    vision_layers: PositiveInt = 2
    text_hidden: PositiveInt = 128
    text_layers: PositiveInt = 2
    heads: PositiveInt = 4
    mlp: PositiveInt = 256


class LoraSpec(Block):
    """LoRA adapters (peft). The AMP paper: r=64, alpha 16 on all attention and MLP projections."""

    r: PositiveInt = 64
    alpha: PositiveFloat = 16
    dropout: Probability = 0.05
    target_modules: list[str] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    export: Literal["merged", "adapter"] = Field(
        "merged", description="save the merged model, or the adapter alone (peft format)"
    )
    quantize_base: Literal["nf4"] | None = Field(
        None,
        description="QLoRA: the frozen language model in 4-bit NF4 (bitsandbytes, double-quantized"
        ", computed in the training dtype); a merged export merges into the unquantized base",
    )


Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# How a run's items become batches (training/inputs.make_plan): "shuffle" (any items together),
# "buckets" (the longest 15% batched apart), "by_length" (items of similar length together within
# windows of 16 global batches, as HF Trainer's group_by_length: least padding)
Batching = Literal["shuffle", "buckets", "by_length"]


def weights_dtype(precision: str) -> str:
    """The dtype of the weights a run trains: bf16 keeps them in bfloat16; fp16 and fp32 keep
    float32 master weights (fp16 is autocast)."""
    return "bfloat16" if precision == "bf16" else "float32"


class ModelSpec(Block):
    """A model by Hugging Face hub id, local directory or s3:// URI, or a tiny one built here."""

    path: str | None = None
    tiny: TinyLlavaSpec | None = None
    dtype: Dtype = Field(
        "auto",
        description="the dtype it loads in wherever it runs (generation, reference, evaluation); "
        "auto: the checkpoint's",
    )
    trust_remote_code: bool = Field(
        False, description="run the checkpoint's own modelling and processing code"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="the attention kernels: sdpa (PyTorch), eager, or flash_attention_2 (needs "
        "the flash-attn package on CUDA nodes)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("give exactly one of `path` (hub id, directory, s3://) or `tiny`")
        return self


class SftRunSpec(Block):
    """One supervised fine-tuning run of the SFT stage: an expert or an incremental checkpoint."""

    init: str = Field(description="name of a model in `models` to start from")
    data_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    steps: NonNegativeInt = 1_500


class OptimizerSpec(Block):
    name: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = Field(
        "adamw",
        description="torch's AdamW, or bitsandbytes' 8-bit-state and/or paged AdamW (QLoRA's "
        "paged_adamw_8bit; paging needs CUDA, elsewhere it runs unpaged)",
    )
    lr: PositiveFloat = 5e-5
    weight_decay: NonNegativeFloat = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8


class ScheduleSpec(Block):
    name: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: NonNegativeInt = 20


class DeepSpeedSpec(Block):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(
        False, description="ZeRO-Offload: optimizer states and step on the CPU (stage 1-3)"
    )
    offload_params: bool = Field(
        False, description="ZeRO-Infinity: parameters in CPU memory between uses (stage 3)"
    )

    @model_validator(mode="after")
    def _offload_fits_the_stage(self) -> DeepSpeedSpec:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3 (only stage 3 partitions them)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self


class ScalingSpec(NodeResources):
    """Ray Train workers: one process each, with these resources."""

    num_workers: PositiveInt = 1
    gpus_per_worker: NonNegativeFloat = 0.0
    cpus_per_worker: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _accelerator_needs_gpus(self) -> ScalingSpec:
        if self.accelerator_type and not self.gpus_per_worker:
            raise ValueError("accelerator_type needs gpus_per_worker > 0")
        return self

    @property
    def bundle(self) -> dict[str, float]:
        return self.placement(self.cpus_per_worker, self.gpus_per_worker)


class WorldCheckSpec(Block):
    """The world check after SFT and after preference training: greedy answers to the eval
    splits' captions, POPE questions and multi-round dialogues, scored against the world's
    ground truth (dialogues with the MRHal-Bench rubric, evaluation/world_judge.py)."""

    max_new_tokens: PositiveInt = 24
    items_per_split: PositiveInt = Field(
        300, description="captions, and POPE questions, answered per eval split"
    )
    dialogues_per_split: NonNegativeInt = Field(
        100, description="MRHal-style dialogues answered per eval split (0: none)"
    )
    actors: ActorPoolSpec = ActorPoolSpec(num_actors=1, num_cpus=0.5, batch_size=512)
    enabled: bool = Field(
        True, description="run it (sweep trials leave the rating to their evaluate stage)"
    )


class SftSpec(Block):
    """Supervised training of the starting models on the run's items (the `sft` split)."""

    runs: dict[str, SftRunSpec] = {}
    micro_batch_size: PositiveInt = 64
    gradient_accumulation_steps: PositiveInt = 1
    optimizer: OptimizerSpec = OptimizerSpec(lr=2e-3, weight_decay=0.01, betas=(0.9, 0.98))
    schedule: ScheduleSpec = ScheduleSpec(name="cosine", warmup_steps=100)
    max_grad_norm: PositiveFloat = 1.0
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    scaling: ScalingSpec = ScalingSpec()
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 50
    max_length: PositiveInt = 2048
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    batching: Batching = Field("buckets", description="how items become global batches")
    max_concurrent_runs: PositiveInt = Field(
        2, description="runs trained side by side (each with its own Ray Train workers)"
    )
    encode_actors: ActorPoolSpec = ActorPoolSpec(num_actors=1, num_cpus=1.0, batch_size=128)
    input_cpus: PositiveFloat = Field(
        0.25, description="CPUs of each task that makes pixel inputs in the workers' pipelines"
    )
    eval: WorldCheckSpec = WorldCheckSpec()
