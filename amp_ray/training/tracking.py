"""What a training run shows while it runs: a progress line per logged window on the driver's
terminal, its metrics as TensorBoard event files in the run directory, and in MLflow where the
spec names a tracking server (`tracking:`).

Every logged window already reaches Ray Train's controller through `ray.train.report`, so one
`ray.train.UserCallback` per run does all three there: no worker writes a tracker, and a worker
group that restarts from a checkpoint keeps logging into the same run. The driver cannot print
what the controller prints (the CLI does not forward Ray's worker logs), so progress lines travel
to it on a `ray.util.queue.Queue` and a driver thread prints them (`progress_lines`): on a
terminal as one live line rewritten in place, elsewhere (a log file, `ray job submit`'s log) as a
plain line per logged window.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TextIO

from ray.train import UserCallback

TENSORBOARD = "tensorboard"  # <stage>/tensorboard/<run>/ in the run directory


class ProgressUpdate(NamedTuple):
    """What a tracker sends the driver after each logged window of its run."""

    run: str
    text: str  # `[sft] expert_m: step 150/300 (50%), 2.10 steps/s, ETA 1m 11s, loss 0.5120`
    finished: bool  # the run's last window


@dataclass
class TrainingTracker(UserCallback):
    """Ray Train callback (on the controller) of one training run."""

    stage: str
    run: str
    total_steps: int
    tensorboard_uri: str | None = None  # where the event files go; None: none written
    storage: dict[str, Any] | None = None  # StorageSpec fields, for an s3 run directory
    mlflow: dict[str, Any] | None = None  # tracking_uri, experiment
    progress: Any = None  # a ray.util.queue.Queue the driver prints from; None: no lines
    started: float = field(default_factory=time.time)  # set on the driver, when the run starts
    _last: tuple[int, float] | None = field(default=None, repr=False)
    _writer: Any = field(default=None, repr=False)
    _location: Any = field(default=None, repr=False)
    _mlflow_run: Any = field(default=None, repr=False)

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        # rank 0's: the preference loop reduces over workers before it reports; sft's loss is
        # rank 0's window
        values = metrics[0] if metrics else {}
        if "step" not in values:
            return
        step = int(values["step"])
        numbers = {
            key: float(value)
            for key, value in values.items()
            if isinstance(value, int | float) and key != "step"
        }
        if self.progress is not None:
            text = self.progress_line(step, numbers.get("loss"), time.time())
            self.progress.put(ProgressUpdate(self.run, text, step >= self.total_steps))
        if self.tensorboard_uri:
            self._tensorboard(step, numbers)
        if self.mlflow:
            self._log_mlflow(step, numbers)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        if self._writer is not None:
            self._writer.flush()

    def progress_line(self, step: int, loss: float | None, now: float) -> str:
        """`[sft] expert_m: step 150/300 (50%), 2.10 steps/s, ETA 1m 11s, loss 0.5120`; the
        rate over the last window (the first one's counts the run's start-up)."""
        last_step, last_time = self._last or (0, self.started)
        self._last = (step, now)
        rate = (step - last_step) / (now - last_time) if step > last_step and now > last_time else 0
        left = self.total_steps - step
        eta = f"ETA {_duration(left / rate)}" if rate and left > 0 else "done" if left <= 0 else ""
        parts = [
            f"[{self.stage}] {self.run}: step {step}/{self.total_steps} "
            f"({100 * step / max(1, self.total_steps):.0f}%)",
            f"{rate:.2f} steps/s" if rate else "",
            eta,
            f"loss {loss:.4f}" if loss is not None else "",
        ]
        return ", ".join(part for part in parts if part)

    def _tensorboard(self, step: int, numbers: dict[str, float]) -> None:
        from amp_ray.storage.location import open_location

        if self._location is None:  # once per run: an s3 location builds its filesystem
            self._location = open_location(self.tensorboard_uri, self._storage())
        location = self._location
        if self._writer is None:
            from tensorboardX import SummaryWriter

            # an s3 run directory: written here, copied there after every window
            directory = location.path if location.is_local else tempfile.mkdtemp(prefix="tb-")
            self._writer = SummaryWriter(logdir=directory, flush_secs=3600)
        for key, value in numbers.items():
            self._writer.add_scalar(key, value, global_step=step)
        logdir = self._writer.logdir
        if step >= self.total_steps:  # the last window: all written, the file closed
            self._writer.close()
            self._writer = None
        else:
            self._writer.flush()
        if not location.is_local:
            for name in os.listdir(logdir):
                with open(os.path.join(logdir, name), "rb") as handle:
                    location.join(name).write_bytes_atomic(handle.read())

    def _log_mlflow(self, step: int, numbers: dict[str, float]) -> None:
        # MLflow's client API, as Ray Tune's MLflowLoggerCallback: no process-global active run
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.mlflow["tracking_uri"])
        if self._mlflow_run is None:
            name = self.mlflow["experiment"]
            experiment = client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(name)
            )
            run = client.create_run(experiment_id, run_name=f"{self.stage}/{self.run}")
            self._mlflow_run = run.info.run_id
        stamp = int(time.time() * 1000)
        batch = [Metric(key, value, stamp, step) for key, value in numbers.items()]
        client.log_batch(self._mlflow_run, metrics=batch)
        if step >= self.total_steps:
            client.set_terminated(self._mlflow_run)

    def _storage(self) -> Any:
        from amp_ray.spec.blocks import StorageSpec

        return StorageSpec(**self.storage) if self.storage else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class ProgressPrinter:
    """Prints progress updates indented under the stage's own "[stage] rows in ..." line. On a
    terminal: one live line holding each running run's latest update, rewritten in place, and a
    run's last update kept as a line of its own. Elsewhere: a line per update."""

    def __init__(self, echo: Callable[[str], None], live: bool, stream: TextIO | None = None):
        self.echo, self.live = echo, live
        self.stream = stream or sys.stdout
        self.latest: dict[str, str] = {}  # run -> its latest update, while it runs

    def show(self, update: ProgressUpdate) -> None:
        if not self.live:
            self.echo(f"  {update.text}")
            return
        self._clear()
        if update.finished:
            self.latest.pop(update.run, None)
            self.echo(f"  {update.text}")
        else:
            self.latest[update.run] = update.text
        self._draw()

    def close(self) -> None:
        if self.live:
            self._clear()

    def _draw(self) -> None:
        if self.latest:
            width = shutil.get_terminal_size().columns - 1  # the cursor stays on the line
            self.stream.write(f"  {' | '.join(self.latest.values())}"[:width])
            self.stream.flush()

    def _clear(self) -> None:
        self.stream.write("\r\033[K")  # to the line's start, then erase it


@contextlib.contextmanager
def progress_lines(
    print_line: Callable[[str], None] | None = None, live: bool | None = None
) -> Iterator[Any]:
    """A queue that training trackers put `ProgressUpdate`s on, printed by a driver thread until
    the block ends (what is still queued then is printed too); `live` (default: stdout is a
    terminal) keeps them on one line rewritten in place."""
    from ray.util.queue import Empty, Queue

    echo = print_line or (lambda line: print(line, file=sys.stdout, flush=True))
    printer = ProgressPrinter(echo, sys.stdout.isatty() if live is None else live)
    queue = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()

    def drain(timeout: float) -> None:
        while True:
            try:
                printer.show(queue.get(timeout=timeout))
            except Empty:
                return

    def loop() -> None:
        while not stop.is_set():
            drain(timeout=1.0)

    thread = threading.Thread(target=loop, name="amp-ray-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=5)
        drain(timeout=0.1)
        printer.close()
        queue.shutdown()
