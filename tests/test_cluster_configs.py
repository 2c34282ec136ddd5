"""Every cluster launcher YAML under cluster/ passes Ray's own schema check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_config_is_valid_for_ray(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    assert config["cluster_name"].startswith("amp-ray")
    assert any("make install" in command for command in config["setup_commands"])
