"""The stages amp-ray can run, by pipeline name (see amp_ray.spec.PIPELINE for the order)."""

from amp_ray.stages.base import Stage
from amp_ray.stages.data import DataStage
from amp_ray.stages.evaluate import EvaluateStage
from amp_ray.stages.generate import GenerateStage
from amp_ray.stages.rank import RankStage
from amp_ray.stages.reference import ReferenceStage
from amp_ray.stages.report import ReportStage
from amp_ray.stages.sft import SftStage
from amp_ray.stages.sweep import SweepStage
from amp_ray.stages.train import TrainStage

STAGES: dict[str, type[Stage]] = {
    stage.name: stage
    for stage in (
        DataStage,
        SftStage,
        GenerateStage,
        RankStage,
        ReferenceStage,
        TrainStage,
        EvaluateStage,
        SweepStage,
        ReportStage,
    )
}

__all__ = ["STAGES", "Stage"]
