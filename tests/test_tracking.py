"""Training runs' progress lines, TensorBoard files and MLflow metrics (training/tracking.py)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from tensorboardX.proto.event_pb2 import Event

from amp_ray.training.tracking import ProgressPrinter, ProgressUpdate, TrainingTracker


class Lines:
    """Stands in for the driver's queue."""

    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []

    def put(self, update: ProgressUpdate) -> None:
        self.updates.append(update)


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> (step, value) from the TFRecord event files in `directory`."""
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]  # past the length and its crc
            offset += 12 + length + 4
            event = Event.FromString(record)
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_progress_lines_give_steps_rate_eta_and_loss() -> None:
    tracker = TrainingTracker(stage="sft", run="expert_m", total_steps=300, started=100.0)
    first = tracker.progress_line(100, 0.61234, now=150.0)
    assert first == "[sft] expert_m: step 100/300 (33%), 2.00 steps/s, ETA 1m 40s, loss 0.6123"
    # the rate is the last window's: 50 steps in 10 s
    second = tracker.progress_line(150, 0.5, now=160.0)
    assert second == "[sft] expert_m: step 150/300 (50%), 5.00 steps/s, ETA 30s, loss 0.5000"
    assert tracker.progress_line(300, None, now=190.0).endswith("(100%), 5.00 steps/s, done")


def test_on_a_terminal_running_runs_share_one_live_line_and_finished_ones_stay() -> None:
    kept: list[str] = []
    screen = io.StringIO()
    printer = ProgressPrinter(kept.append, live=True, stream=screen)
    printer.show(ProgressUpdate("a", "[sft] a: step 1/2 (50%)", False))
    printer.show(ProgressUpdate("b", "[sft] b: step 1/4 (25%)", False))
    printer.show(ProgressUpdate("a", "[sft] a: step 2/2 (100%)", True))
    printer.close()
    erase = "\r\033[K"
    assert screen.getvalue().split(erase) == [
        "",
        "  [sft] a: step 1/2 (50%)",
        "  [sft] a: step 1/2 (50%) | [sft] b: step 1/4 (25%)",
        "  [sft] b: step 1/4 (25%)",  # a's last update went to the kept lines
        "",
    ]
    assert kept == ["  [sft] a: step 2/2 (100%)"]
    # elsewhere: every update on a line of its own, nothing rewritten
    plain = ProgressPrinter(kept.append, live=False, stream=screen)
    plain.show(ProgressUpdate("b", "[sft] b: step 2/4 (50%)", False))
    assert kept[-1] == "  [sft] b: step 2/4 (50%)"


def test_every_report_goes_to_the_progress_lines_and_tensorboard(tmp_path: Path) -> None:
    lines = Lines()
    board = tmp_path / "sft" / "tensorboard" / "expert_s"
    tracker = TrainingTracker("sft", "expert_s", 4, str(board), progress=lines)
    for step, loss in ((2, 0.9), (4, 0.7)):
        metrics = [{"step": step, "loss": loss, "lr": 1e-3, "note": "text is skipped"}]
        tracker.after_report(None, metrics, checkpoint=None)
    assert [(u.run, u.text.split(",")[0], u.finished) for u in lines.updates] == [
        ("expert_s", "[sft] expert_s: step 2/4 (50%)", False),
        ("expert_s", "[sft] expert_s: step 4/4 (100%)", True),
    ]
    logged = scalars(board)
    assert logged["loss"] == [(2, pytest.approx(0.9)), (4, pytest.approx(0.7))]
    assert [step for step, _ in logged["lr"]] == [2, 4] and "note" not in logged


def test_metrics_reach_an_mlflow_tracking_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store stands in for a server
    uri = (tmp_path / "mlruns").as_uri()
    mlflow = {"tracking_uri": uri, "experiment": "demo"}
    tracker = TrainingTracker("train", "mdpo", 20, mlflow=mlflow)
    for step in (10, 20):
        tracker.after_report(None, [{"step": step, "loss": 1 / step, "accuracy/0-1": 0.5}], None)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.run_name == "train/mdpo" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(10, 0.1), (20, 0.05)]
    assert run.data.metrics["accuracy/0-1"] == 0.5
