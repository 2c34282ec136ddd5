"""What a spec asks of a cluster: pool ranges and placement keys, the node-type check that
`amp-ray validate --cluster` runs, the fit check on a Ray that cannot grow, the per-node model
cache, and the device rule for logical GPUs."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import fsspec
import pytest
import yaml
from conftest import REPO

from amp_ray.cli import main
from amp_ray.cluster.requests import (
    NodeType,
    ResourceRequest,
    check_node_types,
    load_node_types,
    most_at_once,
    pack,
    pool_request,
    spec_requests,
    workers_request,
)
from amp_ray.errors import SpecError, StorageError
from amp_ray.spec import load_spec
from amp_ray.spec.blocks import ActorPoolSpec, ScalingSpec
from amp_ray.storage.location import Location

GPU_80 = NodeType("gpu_80", {"CPU": 96, "GPU": 8, "accelerator_type:A100-80G": 1}, 2)
GPU_24 = NodeType("gpu_24", {"CPU": 8, "GPU": 1, "accelerator_type:A10G": 1}, 8)
CPU = NodeType("cpu", {"CPU": 16}, 4)
HEAD = NodeType("head", {"CPU": 0}, 1, head=True)
TYPES = [HEAD, CPU, GPU_24, GPU_80]


def test_a_pool_is_a_fixed_size_or_a_range_and_names_its_placement() -> None:
    fixed = ActorPoolSpec(num_actors=3)
    assert (fixed.min_actors, fixed.max_actors) == (3, 3)
    pool = ActorPoolSpec(
        num_actors=(2, 8), num_cpus=2, num_gpus=1, accelerator_type="A100-80G", resources={"x": 1}
    )
    assert (pool.min_actors, pool.max_actors) == (2, 8)
    # Ray's own spelling of an accelerator type as a resource
    assert pool.bundle == {"CPU": 2, "x": 1, "GPU": 1, "accelerator_type:A100-80G": 0.001}
    with pytest.raises(ValueError, match="ordered"):
        ActorPoolSpec(num_actors=(4, 2))
    with pytest.raises(ValueError, match="needs num_gpus"):
        ActorPoolSpec(accelerator_type="H100")
    with pytest.raises(ValueError, match="needs gpus_per_worker"):
        ScalingSpec(accelerator_type="H100")


def test_requests_are_checked_against_the_node_types() -> None:
    a100 = ActorPoolSpec(num_actors=(4, 8), num_cpus=2, num_gpus=1, accelerator_type="A100-80G")
    check_node_types([pool_request("generation.actors", a100, "pool")], TYPES)
    # 16 A100s at once is exactly what two 8-GPU nodes hold; 17 is not
    workers = ScalingSpec(num_workers=16, gpus_per_worker=1, cpus_per_worker=4)
    assert most_at_once(workers.bundle, TYPES) == 8 * 1 + 2 * 8  # A10G nodes count too
    check_node_types([workers_request("training.scaling", workers, "w")], TYPES)
    too_many = ScalingSpec(num_workers=17, accelerator_type="A100-80G", gpus_per_worker=1)
    with pytest.raises(SpecError, match=r"training.scaling needs 17 x .* holds 16") as error:
        check_node_types([workers_request("training.scaling", too_many, "w")], TYPES)
    assert "gpu_80" in str(error.value)
    h100 = ActorPoolSpec(num_gpus=1, accelerator_type="H100")
    with pytest.raises(SpecError, match="no node type of the cluster has") as error:
        check_node_types([pool_request("evaluation.actors", h100, "pool")], TYPES)
    assert "evaluation.actors" in str(error.value) and "gpu_24" in str(error.value)
    # the head takes no work: a CPU-free pool still needs a worker type
    assert not most_at_once({"CPU": 0.5}, [HEAD])


def test_pack_fits_bundles_node_by_node() -> None:
    one_gpu = ResourceRequest("k", {"CPU": 1, "GPU": 1}, 2, "")
    assert pack([one_gpu], [{"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}], spare_cpus=1)
    assert not pack([one_gpu], [{"CPU": 4, "GPU": 1}], spare_cpus=0)  # 2 GPUs on one node
    # the CPUs left over for Ray Data's tasks
    cpus = ResourceRequest("k", {"CPU": 0.5}, 3, "")
    assert pack([cpus], [{"CPU": 2}], spare_cpus=0.5)
    assert not pack([cpus], [{"CPU": 2}], spare_cpus=1)


def test_node_types_need_declared_resources(tmp_path: Path) -> None:
    config = {"available_node_types": {"w": {"node_config": {}, "max_workers": 2}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SpecError, match="node type 'w' declares no resources"):
        load_node_types(path)
    with pytest.raises(SpecError, match="does not exist"):
        load_node_types(tmp_path / "missing.yaml")


@pytest.mark.parametrize("job", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("cluster", ["aws.yaml", "gcp.yaml"])
def test_every_shipped_spec_fits_the_shipped_clusters(job: Path, cluster: str) -> None:
    spec = load_spec(job)
    types = load_node_types(REPO / "cluster" / cluster)
    check_node_types(spec_requests(spec, list(spec.stages)), types)


def test_validate_with_a_cluster_catches_an_impossible_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec, cluster = str(REPO / "jobs" / "amp_meg_llava15.yaml"), str(REPO / "cluster" / "aws.yaml")
    assert main(["validate", spec, "--cluster", cluster]) == 0
    assert "fit the node types of" in capsys.readouterr().out
    code = main(["validate", spec, "--cluster", cluster, "generation.actors.accelerator_type=B200"])
    err = capsys.readouterr().err
    assert code == 2
    assert "generation.actors asks for" in err and "accelerator_type:B200" in err
    assert "gpu_a100_80" in err  # the node types it could have used are listed
    code = main(["validate", spec, "--cluster", cluster, "training.scaling.num_workers=64"])
    assert code == 2 and "training.scaling needs 64" in capsys.readouterr().err


def test_pools_that_cannot_fit_a_fixed_ray_stop_at_once(ray_session: None) -> None:
    from amp_ray.cluster.capacity import ensure_resources

    pools = [pool_request("generation.actors", ActorPoolSpec(num_cpus=1), "pool of m")] * 2
    with pytest.raises(SpecError, match="no autoscaler") as error:
        ensure_resources(pools, "generate", wait_s=600, spare_cpus=1.0)
    assert "generation.actors" in str(error.value) and "lower num_cpus" in str(error.value)
    ensure_resources(pools[:1], "generate", wait_s=600, spare_cpus=1.0)  # returns at once


def _download(source: str, cached: str) -> str:
    from amp_ray.models.store import download_once

    return str(download_once(Location(fsspec.filesystem("file"), source), Path(cached)))


def test_a_model_downloads_once_per_node_and_partial_folders_go(tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(b"x" * 100_000)
    cached = tmp_path / "cache" / "abc"
    stale = tmp_path / "cache" / "abc.partial-dead00"  # a download killed part-way
    (stale / "sub").mkdir(parents=True)
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        paths = pool.starmap(_download, [(str(source), str(cached))] * 3)
    assert set(paths) == {str(cached)}
    assert (cached / "sub" / "weights.bin").read_bytes() == b"x" * 100_000
    assert sorted(p.name for p in cached.parent.iterdir()) == ["abc", "abc.lock"]


def test_a_short_download_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amp_ray.models.store import download_once

    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"x" * 1000)
    fs = fsspec.filesystem("file")
    monkeypatch.setattr(fs, "get_file", lambda remote, local: Path(local).write_bytes(b"x"))
    with pytest.raises(StorageError, match="got 1 bytes of 1000"):
        download_once(Location(fs, str(source)), tmp_path / "cache" / "m")
    assert not (tmp_path / "cache" / "m").exists()


def test_a_logical_gpu_computes_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from amp_ray.cluster import placement

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a GPU id is a real device here")
    assert placement.compute_device(gpu_ids=[]) == "cpu"
    with caplog.at_level("WARNING"):
        assert placement.compute_device(gpu_ids=[0]) == "cpu"
        assert placement.compute_device(gpu_ids=[0]) == "cpu"
    assert sum("logical GPU" in r.message for r in caplog.records) <= 1  # said once


def test_concurrent_training_runs_leave_cpus_for_their_input_tasks(ray_session) -> None:
    """On this 2-CPU Ray two 1-CPU runs would hold every CPU while their workers wait for the
    Ray Data tasks that make their inputs (the demo's SFT stage hung so): one at a time."""
    from amp_ray.errors import SpecError
    from amp_ray.runtime import concurrent_runs
    from amp_ray.spec.blocks import ScalingSpec

    one_cpu = ScalingSpec(num_workers=1, cpus_per_worker=1)
    assert concurrent_runs(one_cpu, 0.25, 2, "sft.scaling") == 1
    half = ScalingSpec(num_workers=1, cpus_per_worker=0.5)
    assert concurrent_runs(half, 0.25, 2, "sft.scaling") == 2
    assert concurrent_runs(half, 0.25, 1, "sft.scaling") == 1
    with pytest.raises(SpecError, match=r"training.scaling asks for 2.5 CPUs for its 2 worker"):
        concurrent_runs(ScalingSpec(num_workers=2, cpus_per_worker=1), 0.25, 1, "training.scaling")
