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
    Block,
    DataSpec,
    ModelSpec,
    ResourcesSpec,
    RuntimeSpec,
    SftSpec,
    StorageSpec,
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
    def _levels_fit(self) -> JobSpec:
        if self.training.num_levels > self.ranking.num_levels:
            raise ValueError(
                f"training.num_levels ({self.training.num_levels}) exceeds the levels the ranking "
                f"stage keeps (ranking.num_levels = {self.ranking.num_levels})"
            )
        return self

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
