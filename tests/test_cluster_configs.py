"""Every cluster launcher YAML under cluster/ passes Ray's own schema check, offline.

`prepare_config` merges the provider's defaults.yaml shipped with Ray (no cloud call, no
credentials) and `validate_config` checks the result against Ray's JSON schema, as `ray up` does
before it contacts the cloud. The schema leaves `node_config` free-form (instance types, images,
IAM), so those parts are not checked here; nothing here has launched a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))
CLOUD = ["aws.yaml", "gcp.yaml"]


def prepared(path: Path) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load(path.read_text()))


def validate(config: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(config)


def setup_lists(config: dict[str, Any]) -> dict[str, list[str]]:
    """What each kind of node runs to set up, after Ray merged setup_commands in."""
    lists = {
        "head": config["head_setup_commands"],
        "worker": config["worker_setup_commands"],
    }
    for name, node_type in config["available_node_types"].items():
        if "worker_setup_commands" in node_type:  # a node type's own list replaces both
            lists[name] = node_type["worker_setup_commands"]
    return lists


def start_commands(config: dict[str, Any]) -> list[str]:
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [c for c in commands if "ray start" in c]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cluster_config_is_valid_for_ray(path: Path) -> None:
    config = prepared(path)
    validate(config)
    assert config["cluster_name"].startswith("amp-ray")
    for kind, commands in setup_lists(config).items():
        assert any("make install" in command for command in commands), kind


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_node_gets_the_token_and_requires_it(path: Path) -> None:
    """`ray start` without RAY_AUTH_MODE=token starts an open cluster when no token is found."""
    config = prepared(path)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = start_commands(config)
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in command for command in starts)


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_config_has_a_cpu_head_and_autoscaling_gpu_workers(name: str) -> None:
    config = prepared(CLUSTER / name)
    validate(config)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["resources"].get("GPU")
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert any(t["max_workers"] > t["min_workers"] for t in gpu.values()), gpu
    # The GPU count tells generation nodes from training nodes.
    assert len({t["resources"]["GPU"] for t in gpu.values()}) >= 2
    assert config["max_workers"] == sum(t["max_workers"] for t in workers.values())
    assert config["idle_timeout_minutes"] > 0
    assert config["upscaling_speed"] > 0


def test_gcp_gpu_nodes_stop_on_host_maintenance() -> None:
    """GCE refuses to create a VM with GPUs that it would have to live-migrate."""
    config = prepared(CLUSTER / "gcp.yaml")
    for name, node_type in config["available_node_types"].items():
        if node_type["resources"].get("GPU"):
            assert node_type["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", name


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_config_header_lists_the_commands(name: str) -> None:
    header = "\n".join(
        line for line in (CLUSTER / name).read_text().splitlines() if line.startswith("#")
    )
    for command in (
        f"ray up cluster/{name}",
        f"ray dashboard cluster/{name}",
        "RAY_AUTH_MODE=token",
        "ray job submit --working-dir . --runtime-env-json",
        "amp-ray run jobs/demo.yaml storage.run_dir=",
        "ray job logs --follow",
        "ray job status",
        "amp-ray report",
        f"ray down cluster/{name}",
    ):
        assert command in header, command


def _misspell_top_level(raw: dict[str, Any]) -> None:
    raw["setup_comands"] = raw.pop("setup_commands")


def _misspell_node_type_key(raw: dict[str, Any]) -> None:
    node_type = raw["available_node_types"]["gpu_a100_80"]
    node_type["max_worker"] = node_type.pop("max_workers")


def _fractional_gpu_count(raw: dict[str, Any]) -> None:
    raw["available_node_types"]["gpu_a100_80"]["resources"]["GPU"] = 0.5


@pytest.mark.parametrize(
    "break_it", [_misspell_top_level, _misspell_node_type_key, _fractional_gpu_count]
)
@pytest.mark.parametrize("name", CLOUD)
def test_a_broken_config_fails_validation(name: str, break_it: Any) -> None:
    """The check above can fail: Ray's schema refuses unknown keys and non-integer resources."""
    from ray.autoscaler._private.util import prepare_config

    raw = yaml.safe_load((CLUSTER / name).read_text())
    break_it(raw)
    with pytest.raises(jsonschema.ValidationError):
        validate(prepare_config(raw))
