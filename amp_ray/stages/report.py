"""The report stage: the run's report (Markdown, HTML, PNG plots) under <run_dir>/report/.

It reads every metrics dataset the run has (the world checks of sft and train, evaluate's
benchmarks), train/log and sweep/results, and prints the headline table and the report's path:
the last thing the main job says. `amp-ray report RUN [RUN ...]` writes the same report across
several runs.
"""

from __future__ import annotations

from typing import Any

from amp_ray.stages.base import Stage, StageCounts

READS = (
    ("sft", "metrics"),
    ("train", "metrics"),
    ("train", "log"),
    ("evaluate", "metrics"),
    ("sweep", "results"),
)


class ReportStage(Stage):
    name = "report"
    outputs = ()

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        """The datasets it reads that this run makes or has: a change to any re-writes it."""
        return tuple(
            (stage, dataset)
            for stage, dataset in READS
            if stage in self.spec.stages or self.run_dir.dataset(stage, dataset).exists
        )

    def config(self) -> dict[str, Any]:
        return {}

    def run(self) -> StageCounts:
        from amp_ray.report.document import write_report

        self.paths = write_report(
            [self.run_dir.uri], self.run_dir.location.join(self.name).uri, self.spec.storage
        )
        return StageCounts(len(self.inputs), len(self.paths.all()))

    def summary(self) -> list[str]:
        paths = getattr(self, "paths", None)
        if paths is None:
            return []
        return [*paths.headline, f"report: {paths.markdown} and {paths.html}"]
