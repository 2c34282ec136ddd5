"""The job spec: one typed document that describes a whole run, stage by stage."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from amp_ray.spec.alignment import (
    EvaluationSpec,
    GenerationSpec,
    RankingSpec,
    ReferenceSpec,
    SweepSpec,
    TrainingSpec,
)
from amp_ray.spec.blocks import (
    PREFERENCE_SOURCES,
    Block,
    DataSpec,
    ModelSpec,
    ResourcesSpec,
    RuntimeSpec,
    SftSpec,
    StorageSpec,
    TrackingSpec,
    weights_dtype,
)

StageName = Literal[
    "data", "sft", "generate", "rank", "reference", "train", "evaluate", "sweep", "report"
]
# The pipeline order: a spec lists a subset of these, in this order.
PIPELINE: tuple[str, ...] = get_args(StageName)

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)]


class JobSpec(Block):
    """A run: which stages to run, over what data and models, with which settings, stored where."""

    name: Name
    seed: int = 0
    stages: list[StageName] = Field(min_length=1)
    storage: StorageSpec
    resources: ResourcesSpec = ResourcesSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    tracking: TrackingSpec = TrackingSpec()
    data: DataSpec = DataSpec()
    models: dict[Name, ModelSpec] = {}
    sft: SftSpec = SftSpec()
    generation: GenerationSpec = GenerationSpec()
    ranking: RankingSpec = RankingSpec()
    reference: ReferenceSpec = ReferenceSpec()
    training: TrainingSpec = TrainingSpec()
    sweep: SweepSpec = SweepSpec()
    evaluation: EvaluationSpec = EvaluationSpec()

    @model_validator(mode="after")
    def _stages_in_pipeline_order(self) -> JobSpec:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages {self.stages} lists a stage twice")
        ordered = sorted(self.stages, key=PIPELINE.index)
        if ordered != self.stages:
            raise ValueError(f"stages must follow the pipeline order: {ordered}")
        return self

    @model_validator(mode="after")
    def _model_references_resolve(self) -> JobSpec:
        clash = sorted(set(self.models) & set(self.sft.runs))
        if clash:
            raise ValueError(f"names {clash} are used both in models and in sft.runs")
        if self.training.name in set(self.models) | set(self.sft.runs):
            raise ValueError(
                f"training.name {self.training.name!r} is already a model or an SFT run; "
                "the trained policy needs a name of its own"
            )
        known = set(self.models) | set(self.sft.runs)
        for where, name in self.model_references():
            if name not in known:
                raise ValueError(
                    f"{where} refers to model {name!r}, which is neither in models nor in "
                    f"sft.runs (known: {sorted(known) or 'none'})"
                )
        for run_name in self.sft.runs:
            seen = [run_name]
            while seen[-1] in self.sft.runs:
                init = self.sft.runs[seen[-1]].init
                if init not in known:
                    raise ValueError(
                        f"sft.runs.{seen[-1]}.init must name a model or another SFT run, "
                        f"got {init!r}"
                    )
                if init in seen:
                    raise ValueError(f"sft.runs start from each other in a cycle: {[*seen, init]}")
                seen.append(init)
        return self

    @model_validator(mode="after")
    def _training_fits_what_earlier_stages_make(self) -> JobSpec:
        """The rules the train stage enforces on earlier stages' output, checked by validate and
        before the first stage of a run rather than after hours of generation and ranking."""
        training = self.training
        if not {"train", "sweep"} & set(self.stages):
            return self
        ranked = self.data.source not in PREFERENCE_SOURCES  # imported data: K is the file's
        if ranked and training.num_levels != self.ranking.num_levels:
            raise ValueError(
                f"training.num_levels ({training.num_levels}) must equal ranking.num_levels "
                f"({self.ranking.num_levels}): the rank stage keeps exactly that many levels per "
                "item; to train on fewer, keep K and choose them with training.levels"
            )
        for arm in training.compare.arms:
            if training.arm(arm).num_levels != training.num_levels:
                raise ValueError(
                    f"compare.arms.{arm}.num_levels differs from training.num_levels: every "
                    f"arm reads the same data; choose its levels with compare.arms.{arm}.levels"
                )
        self._reference_dtype_fits()
        return self

    def _reference_dtype_fits(self) -> None:
        """Stored reference log-probs are scored in the reference entry's dtype: where the spec
        names it, it must be the dtype the policy trains in (stages/train.check_reference_dtype
        checks the scored data itself)."""
        training = self.training
        recipes = [training] + [training.arm(arm) for arm in training.compare.arms]
        recipes += [training.online_recipe()] if training.online.rounds else []
        stored = any(recipe.reads_stored_reference for recipe in recipes)
        entry = self.root_model(str(self.reference.model or training.policy))
        dtype = self.models[entry].dtype if entry in self.models else "auto"
        trains_in = weights_dtype(training.precision)
        allowed = training.reference_dtype_mismatch == "allow"
        if not stored or allowed or dtype in ("auto", trains_in):
            return
        raise ValueError(
            f"models.{entry}.dtype {dtype} scores the reference log-probs, but training.precision "
            f"{training.precision} trains the policy in {trains_in}: set models.{entry}.dtype: "
            f"{trains_in}, or training.reference_dtype_mismatch: allow"
        )

    def root_model(self, name: str) -> str:
        """The `models` entry an SFT run chain starts from (`name` itself for a model)."""
        while name in self.sft.runs:
            name = self.sft.runs[name].init
        return name

    @model_validator(mode="after")
    def _online_rounds_can_run(self) -> JobSpec:
        training = self.training
        if training.online.rounds == 0:
            return self
        if training.online.generator == "bdhs" and not self.generation.bdhs.rho_th:
            raise ValueError(
                "training.online.generator bdhs needs at least one generation.bdhs.rho_th"
            )
        if training.lora is not None and training.lora.export == "adapter":
            raise ValueError(
                "training.online.rounds start each round from the last round's model, which "
                "needs whole weights: set training.lora.export: merged"
            )
        return self

    def model_references(self) -> list[tuple[str, str]]:
        """Every (field path, model name) pair in the spec that must name a known model."""
        refs: list[tuple[str, str | None]] = [
            ("generation.bdhs.model", self.generation.bdhs.model),
            ("reference.model", self.reference.model),
            ("training.policy", self.training.policy),
        ]
        refs += [
            (f"generation.meg.experts[{i}]", n) for i, n in enumerate(self.generation.meg.experts)
        ]
        refs += [
            (f"generation.ig.checkpoints[{i}]", n)
            for i, n in enumerate(self.generation.ig.checkpoints)
        ]
        return [(where, name) for where, name in refs if name is not None]
