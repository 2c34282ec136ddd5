"""What a stage is: a unit of the pipeline that reads committed datasets and commits new ones.

To add a stage: subclass `Stage`, set `name` (a name of `amp_ray.spec.PIPELINE`), `inputs` and
`outputs`, implement `config()` (the spec values its result depends on) and `run()`, and register
the class in `amp_ray/stages/__init__.py`. CONTRIBUTING.md walks through an example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from amp_ray.spec import JobSpec
from amp_ray.storage import RunDir


@dataclass(frozen=True)
class StageCounts:
    """What a stage did, for its summary line."""

    rows_in: int
    rows_out: int
    rows_quarantined: int = 0


@dataclass(frozen=True)
class StageReport:
    stage: str
    status: str  # "done", "skipped" (complete already) or "redone" (forced or inputs changed)
    rows_in: int
    rows_out: int
    rows_quarantined: int
    seconds: float

    def line(self) -> str:
        if self.status == "skipped":
            return f"[{self.stage}] complete already ({self.rows_out} rows); --force re-runs it"
        return (
            f"[{self.stage}] rows in {self.rows_in}, out {self.rows_out}, "
            f"quarantined {self.rows_quarantined}, {self.seconds:.1f} s"
        )


class Stage(ABC):
    """A pipeline stage. The driver calls `preflight()` before Ray starts, then `run()`."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[tuple[str, str], ...]] = ()  # (stage, dataset) pairs it reads
    outputs: ClassVar[tuple[str, ...]] = ()  # datasets it commits under <run_dir>/<name>/

    def __init__(self, spec: JobSpec, run: RunDir, force: bool = False) -> None:
        self.spec = spec
        self.run_dir = run
        self.force = force  # redo from scratch: do not resume from earlier checkpoints

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The spec values this stage's output depends on (JSON-able); a change means a re-run."""

    def preflight(self) -> None:  # noqa: B027 (optional hook)
        """Checks that need no Ray: paths exist, references resolve. Raise AmpRayError to stop."""

    @abstractmethod
    def run(self) -> StageCounts:
        """Do the work and commit every dataset in `outputs`."""

    def summary(self) -> list[str]:
        """Lines printed under the stage's summary line (a table of what it made), if any."""
        return []
