"""`ray job submit` of an amp-ray spec to a real `ray start --head` on 127.0.0.1, as in
docs/usage.md.

The head is this test's own: its own --temp-dir and ports, started with `--block` in a process
group of its own, stopped by SIGTERM to `ray start` and then SIGKILL to what is left of the
group. `ray stop` is never called: it stops every Ray process of the user on the machine, other
people's clusters included.

Authentication is token mode, as docs/usage.md tells users, with the token in a file of the test's
own that RAY_AUTH_TOKEN_PATH points at (on both the head and the submitting side): the user's
~/.ray/auth_token is neither read nor written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import tiny_world_spec
from ray_heads import Head, ray_job, started_head, submit_amp_ray, wait_for_job

from amp_ray.storage import RunDir


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[Head]:
    with started_head(tmp_path) as head:
        yield head


def test_ray_job_submit_runs_the_data_stage_on_a_ray_head(ray_head: Head, tmp_path: Path) -> None:
    # The head checks tokens: a client that sends none is turned away with the message that
    # docs/usage.md quotes.
    no_token = ray_job(ray_head, "list", env={**ray_head.env, "RAY_AUTH_MODE": "disabled"})
    assert no_token.returncode != 0
    assert "Missing authentication token" in no_token.stderr, no_token.stderr[-2000:]

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_world_spec("runs/tiny")))
    run_dir = tmp_path / "run"
    # docs/usage.md, "Running on a Ray cluster". The spec and the run dir are absolute paths on this
    # machine, which is the whole cluster.
    job_id = submit_amp_ray(ray_head, "run", str(spec), f"storage.run_dir={run_dir}")
    state = wait_for_job(ray_head, job_id)
    logs = ray_job(ray_head, "logs", job_id)
    assert state == "succeeded", (
        f"job {state}\n--- ray job logs {job_id} ---\n{logs.stdout}{logs.stderr}"
    )
    assert "[data] rows in 62, out 146, quarantined 0" in logs.stdout  # 50 + 12 images x 8 items

    record = json.loads((run_dir / "data" / "_stage.json").read_text())
    assert record["report"]["status"] == "done" and record["report"]["rows_out"] == 146
    items = RunDir.open(str(run_dir)).dataset("data", "items").read_table()
    assert items.num_rows == 146
