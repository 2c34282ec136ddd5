"""amp-ray on an autoscaling cluster, simulated on this machine: Ray's fake multi-node autoscaler.

The head has 0 CPUs (as in cluster/aws.yaml); a `cpu` worker type (2 CPUs, 0 to 2 nodes) and a
`gpu` worker type (1 logical GPU + 2 CPUs, 0 to 2 nodes) exist only when work asks for them. A
small world job is submitted with `ray job submit`, its run directory on S3 (a moto server on
127.0.0.1), and its generate, train and evaluate stages ask for a GPU. The GPU is logical: the
work that gets it computes on the CPU and says so (cluster/placement.py).

- The job succeeds; the autoscaler launched the worker nodes (there were none before); every
  GPU actor and Ray Train worker ran on the `gpu` node (the stages' records name each one's
  node); every output holds each item exactly once; the nodes go after their idle timeout.
- One of two GPU nodes lost in the middle of generate: the job still completes with every item
  exactly once.
- A local run directory on this cluster is refused before any stage runs.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import tiny_world_spec
from ray_heads import Head, ray_job, started_head, submit_amp_ray, wait_for_job

from amp_ray.spec.blocks import StorageSpec
from amp_ray.storage import RunDir

pytestmark = pytest.mark.slow
JOB_TIMEOUT_S = 900
IDLE_TIMEOUT_MINUTES = 0.25

CLUSTER = {
    "cluster_name": "amp-ray-simulated",
    "max_workers": 4,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
    "provider": {
        "type": "fake_multinode",
        "gcs_address": "127.0.0.1:GCS_PORT",  # filled in by started_head
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        "cpu": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        "gpu": {
            "resources": {"CPU": 2, "GPU": 1},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 2,
        },
    },
    "head_node_type": "ray.head.default",
    "auth": {"ssh_user": "ubuntu"},
    "file_mounts": {},
    "cluster_synced_files": [],
    "initialization_commands": [],
    "head_setup_commands": [],
    "setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}
TINY = {"vision_hidden": 32, "text_hidden": 64, "text_layers": 1, "mlp": 128}
GPU_POOL = {"num_actors": 1, "num_cpus": 1, "num_gpus": 1, "batch_size": 1}
PREFERENCE_ITEMS = 40


def cluster_spec(run_dir: str, endpoint: str | None) -> dict[str, Any]:
    """The whole pipeline on a tiny world; generate, train and evaluate ask for the GPU."""
    raw = tiny_world_spec(run_dir)
    raw.update(name="simulated-cluster", seed=0)
    raw["stages"] = ["data", "sft", "generate", "rank", "reference", "train", "evaluate"]
    raw["storage"] = {"run_dir": run_dir, "endpoint_url": endpoint}
    evals = {"eval_iid": 2, "eval_bias_probe": 2, "eval_control": 2}
    raw["data"]["world"]["splits"] = {"sft": 40, "preference": PREFERENCE_ITEMS, **evals}
    raw["data"]["actors"] = {"num_actors": [1, 2], "num_cpus": 0.5, "batch_size": 16}
    raw["models"] = {"small": {"tiny": TINY}}
    raw["sft"] = {
        "runs": {"expert": {"init": "small", "steps": 2}},
        "micro_batch_size": 8,
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "encode_actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 64},
        "eval": {"enabled": False},
    }
    raw["generation"] = {
        "methods": ["meg"],
        "meg": {"experts": ["expert"]},
        "sampling": {
            "max_new_tokens": 12,
            "do_sample": True,
            "temperature": 1.5,
            "num_beams": 1,
            "num_samples": 4,
        },
        "actors": GPU_POOL,  # one item a batch: the journal records each one alone
    }
    raw["ranking"] = {"checker": "ground_truth", "num_levels": 2, "actors": {"num_cpus": 0.5}}
    raw["reference"] = {"actors": {"num_cpus": 0.5, "batch_size": 8}}
    raw["training"] = {
        "policy": "expert",
        "name": "aligned",
        "loss": "dpo",
        "num_levels": 2,
        "max_steps": 2,
        "micro_batch_size": 2,
        "scaling": {"num_workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1},
        "encode_actors": {"num_cpus": 0.5, "batch_size": 8},
        "eval": {"enabled": False},
    }
    raw["evaluation"] = {
        "benchmarks": ["chair", "pope"],
        "items_per_split": 1,
        "decoding": {"max_new_tokens": 6, "do_sample": False, "num_beams": 1},
        "actors": {**GPU_POOL, "batch_size": 8},
    }
    return raw


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    directory = tmp_path_factory.mktemp("simulated-cluster")
    config = directory / "cluster.yaml"
    config.write_text(yaml.safe_dump(CLUSTER))
    with started_head(directory, num_cpus=0, token=False, autoscaling_config=config) as head:
        yield head


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"amp-ray-cluster-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def nodes(head: Head) -> list[dict[str, Any]]:
    """Every node the cluster has had (alive or not): id, alive, resources."""
    script = (
        "import json, sys, ray\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
        "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], "
        "'resources': n['Resources']} for n in ray.nodes()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, head.gcs_address],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def submit(head: Head, spec: Path, *args: str) -> str:
    """Without --working-dir: the simulated nodes share this machine's Ray temp dir, and when a
    worker node's runtime-env agent cleans up the job's unpacked working dir, it deletes it under
    the driver on the head too (its cwd vanishes mid-job; on separate machines each node has its
    own copy). The driver runs the installed amp-ray, the same code."""
    return submit_amp_ray(head, "run", str(spec), *args, working_dir=None)


def finished(head: Head, job_id: str) -> tuple[str, str]:
    state = wait_for_job(head, job_id, JOB_TIMEOUT_S)
    logs = ray_job(head, "logs", job_id)
    return state, logs.stdout + logs.stderr


def write_spec(directory: Path, raw: dict[str, Any]) -> Path:
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def placements(run: RunDir, stage: str) -> list[dict[str, Any]]:
    record = json.loads(run.location.join(stage, "_stage.json").read_bytes())
    return record["report"]["placements"]


def lose_node(node_id: str) -> None:
    """Kill one simulated node as a lost machine goes: its raylet and every worker under it."""
    for process in psutil.process_iter(["cmdline"]):
        if f"--node_id={node_id}" in (process.info["cmdline"] or ()):
            # Kill the raylet first so it starts no new worker, then whatever is left under it;
            # a worker may end on its own between listing and killing.
            children = process.children(recursive=True)
            for doomed in (process, *children):
                with contextlib.suppress(psutil.NoSuchProcess):
                    doomed.kill()
            return
    raise AssertionError(f"no raylet of node {node_id}")


def item_ids(run: RunDir, stage: str, dataset: str) -> list[str]:
    return run.dataset(stage, dataset).read_table(["item_id"]).column("item_id").to_pylist()


def test_a_local_run_dir_is_refused_before_any_stage_runs(cluster: Head, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job_id = submit(cluster, write_spec(tmp_path, cluster_spec(str(run_dir), None)))
    state, logs = finished(cluster, job_id)
    assert state == "failed", logs
    assert f"storage.run_dir {run_dir} is on local disk" in logs, logs[-3000:]
    assert "storage.shared=true" in logs and "s3://" in logs
    assert "[data]" not in logs  # no stage ran ...
    assert not run_dir.exists() or not any(run_dir.iterdir())  # ... and nothing was written


@pytest.mark.timeout(1200)  # about 4 minutes alone on 2 cores; the job's own limit is 900 s
def test_the_autoscaler_brings_the_nodes_and_gpu_work_runs_on_the_gpu_node(
    cluster: Head, bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    before = nodes(cluster)
    assert [n["alive"] for n in before] == [True] and "CPU" not in before[0]["resources"]
    run_dir = f"s3://{bucket}/run"
    spec = write_spec(tmp_path, cluster_spec(run_dir, s3_endpoint))
    state, logs = finished(cluster, submit(cluster, spec))
    assert state == "succeeded", logs[-6000:]
    assert "waiting up to 900 s for the autoscaler" in logs

    launched = {n["id"] for n in nodes(cluster)} - {n["id"] for n in before}
    assert launched, "the autoscaler launched no node"

    run = RunDir.open(run_dir, StorageSpec(run_dir=run_dir, endpoint_url=s3_endpoint))
    gpu_roles = {
        "generate": ["ModelCandidates:expert"],
        "train": ["training.scaling:aligned"],
        "evaluate": ["AnswerGenerator:aligned", "AnswerGenerator:expert", "AnswerGenerator:small"],
    }
    for stage, roles in gpu_roles.items():
        placed = [p for p in placements(run, stage) if p["gpu_ids"]]
        assert sorted({p["role"] for p in placed}) == roles, placements(run, stage)
        for placement in placed:
            assert placement["node_id"] in launched and placement["node_type"] == "gpu"
            assert placement["device"] == "cpu"  # a logical GPU: torch sees no CUDA
    # CPU-only pools get no GPU; the first one made the autoscaler add a `cpu` node
    for placement in placements(run, "data"):
        assert placement["node_type"] == "cpu" and placement["node_id"] in launched
    assert not any(p["gpu_ids"] for p in placements(run, "data") + placements(run, "rank"))

    # every output holds each item exactly once
    items = run.dataset("data", "items").read_table(["item_id", "split"]).to_pylist()
    preference = sorted(row["item_id"] for row in items if row["split"] == "preference")
    assert len(preference) == PREFERENCE_ITEMS
    assert sorted(item_ids(run, "generate", "candidates")) == preference
    ranked = item_ids(run, "rank", "preferences") + item_ids(run, "rank", "quarantine")
    assert sorted(ranked) == preference
    assert sorted(item_ids(run, "reference", "preferences")) == sorted(
        item_ids(run, "rank", "preferences")
    )
    answers = run.dataset("evaluate", "answers").read_table(["model", "item_id"]).to_pylist()
    keys = [(row["model"], row["item_id"]) for row in answers]
    assert len(keys) == len(set(keys)) and {model for model, _ in keys} == {
        "small",
        "expert",
        "aligned",
    }

    # idle nodes go once nothing asks for them
    deadline = time.monotonic() + IDLE_TIMEOUT_MINUTES * 60 + 120
    while any(n["alive"] and n["resources"].get("CPU") for n in nodes(cluster)):
        assert time.monotonic() < deadline, "worker nodes still alive after the idle timeout"
        time.sleep(5)


@pytest.mark.timeout(1200)
def test_a_gpu_node_lost_in_the_middle_of_generate_loses_no_item(
    cluster: Head, bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """Runs after the test above, on its run directory: generate again from scratch (--force)
    with two GPU actors, which bring two `gpu` nodes, and lose one of the nodes once a few
    batches are journaled. Ray Data retries the lost node's batches on the other actor (and on
    a replacement node, if the autoscaler adds one before the end).

    (Why not lose the only GPU node and wait for a new one: the fake provider has no cloud that
    reports a machine gone, so Ray's autoscaler v1 keeps the dead node as "pending" for good,
    and the lost actor's pending request keeps it from being ended as idle; on a real cloud the
    instance leaves the provider's list and the autoscaler replaces it.)"""
    import s3fs

    run_dir = f"s3://{bucket}/run"
    raw = cluster_spec(run_dir, s3_endpoint)
    raw["generation"]["actors"] = {**GPU_POOL, "num_actors": 2}
    job_id = submit(cluster, write_spec(tmp_path, raw), "--stage", "generate", "--force")
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    entries = f"{bucket}/run/generate/_journal/entries"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    for polls in range(sys.maxsize):
        fs.invalidate_cache()
        done = len(fs.ls(entries)) if fs.exists(entries) else 0
        gpu = [n["id"] for n in nodes(cluster) if n["alive"] and n["resources"].get("GPU")]
        if done >= 2 and len(gpu) == 2:
            break
        assert time.monotonic() < deadline, f"{done} batches journaled on {len(gpu)} GPU nodes"
        if polls % 20 == 19:  # the job must not have ended before a batch was seen
            status = ray_job(cluster, "status", job_id)
            assert "RUNNING" in status.stdout + status.stderr or "PENDING" in status.stdout, (
                status.stdout + status.stderr
            )
        time.sleep(0.5)
    lose_node(gpu[0])
    assert done < PREFERENCE_ITEMS, "generate ended before the node could be lost"

    state, logs = finished(cluster, job_id)
    assert state == "succeeded", logs[-6000:]
    run = RunDir.open(run_dir, StorageSpec(run_dir=run_dir, endpoint_url=s3_endpoint))
    generated = item_ids(run, "generate", "candidates")
    assert len(generated) == PREFERENCE_ITEMS == len(set(generated))
    # the pool ran on both GPU nodes, the lost one included (and on a node the autoscaler put
    # in its place, where one came before the end)
    placed = [p for p in placements(run, "generate") if p["gpu_ids"]]
    assert set(gpu) <= {p["node_id"] for p in placed}, placed
    assert {p["node_type"] for p in placed} == {"gpu"}, placed


def test_an_autoscaler_that_never_delivers_ends_with_the_resource_named(
    cluster: Head, bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """Four 2-CPU item actors: the node types hold them (2 cpu nodes + 2 gpu nodes), so the
    spec is valid, but never with a CPU left for the tasks that feed them."""
    raw = cluster_spec(f"s3://{bucket}/never", s3_endpoint)
    raw["stages"] = ["data"]
    raw["data"]["actors"] = {"num_actors": 4, "num_cpus": 2, "batch_size": 16}
    raw["runtime"] = {"resource_wait_s": 30}
    state, logs = finished(cluster, submit(cluster, write_spec(tmp_path, raw)))
    assert state == "failed", logs
    assert "waited 30 s (runtime.resource_wait_s)" in logs, logs[-3000:]
    assert "data.actors (the item pool): 4 x {CPU: 2}" in logs
    assert "node types that could provide it: cpu, gpu" in logs
    assert "[data] rows in" not in logs
