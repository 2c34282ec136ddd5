"""A real client of what amp-ray writes: TRL's DPOTrainer on `amp-ray export --format trl_dpo`
of a small world run, with the model that run exported (the slow selection of CI runs it).

The run imports K = 4 levels over the world's captions and dialogues and aligns the tiny LLaVA
for 2 steps; its export is read by `datasets` as HF writes it and trained on by TRL for 2 steps,
and every record is scored by TRL (its reward margin) with chosen and rejected apart. The model
folder loads offline with AutoModelForImageTextToText and AutoProcessor alone, and generates.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from test_preference_training import amp_json_from_world, training_spec

from amp_ray.cli import main
from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

GENERATES_OFFLINE = """
import sys
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder)
processor = AutoProcessor.from_pretrained(folder)
content = [{"type": "image"}, {"type": "text", "text": "describe ."}]
messages = [{"role": "user", "content": content}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.new("RGB", (32, 32), "red"), text=text, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
print(len(out[0]) - inputs["input_ids"].shape[1])
"""


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory: pytest.TempPathFactory, world_items: list[dict], tiny_dir: str):
    """(run directory, the exported model folder) of a 2-step MDPO run on one worker."""
    root = tmp_path_factory.mktemp("trl-run")
    data = amp_json_from_world(root / "amp", world_items)
    spec = training_spec(
        root / "run",
        data,
        tiny_dir,
        max_steps=2,
        checkpoint_every=2,
        scaling={"num_workers": 1, "cpus_per_worker": 1},
    )
    run_job(validate_spec(spec), echo=lambda line: None)
    models = root / "run" / "train" / "models" / "aligned"
    attempt = json.loads((models / "_model.json").read_text())["attempt"]
    return root / "run", models / attempt


def test_trl_dpo_trainer_trains_on_the_export_with_the_exported_model(
    aligned_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    run_dir, model_dir = aligned_run
    dest = tmp_path / "pairs.parquet"
    args = ["export", "--format", "trl_dpo", "--pairs", "best_vs_rest", str(run_dir), str(dest)]
    assert main(args) == 0
    assert "trl_dpo records" in capsys.readouterr().out
    dataset = Dataset.from_parquet(str(dest))
    assert type(dataset.features["images"].feature).__name__ == "Image"  # HF decodes the images
    records = dataset.to_list()
    assert records and all(r["chosen"] != r["rejected"] for r in records)
    assert any(len(r["chosen"]) > 1 for r in records)  # dialogue pairs carry their later rounds

    class Recording(DPOTrainer):
        """DPOTrainer that keeps each evaluated batch's mean reward margin before `log`
        averages them away (eval batches of one record: one margin a record)."""

        margins: ClassVar[list[float]] = []

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            type(self).margins.extend(self._metrics["eval"]["rewards/margins"])
            super().log(logs, start_time)

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    config = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=1,
        max_steps=2,
        learning_rate=1e-4,
        max_length=None,
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = Recording(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=processor,
    )
    history = trainer.train().metrics
    assert history["train_runtime"] > 0 and trainer.state.global_step == 2
    trainer.evaluate()
    assert len(Recording.margins) == len(records)
    # after 2 steps every pair has a margin of its own: 0 would mean chosen == rejected
    assert all(math.isfinite(margin) and margin != 0 for margin in Recording.margins)


def test_the_exported_model_loads_offline_with_auto_classes_alone_and_generates(
    aligned_run: tuple[Path, Path],
) -> None:
    _, model_dir = aligned_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", GENERATES_OFFLINE, str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 0
