"""Shared fixtures: one local Ray for the session, a real S3 server on loopback, tiny specs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never touch a developer's real AWS account or instance metadata; set before Ray starts so
# that Ray workers inherit the same environment.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
    }
)
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray (2 logical CPUs, like CI) for every test that needs it."""
    from amp_ray.runtime import RaySession
    from amp_ray.spec.blocks import ResourcesSpec

    with RaySession(ResourcesSpec(num_cpus=2)) as session:
        session.ensure()
        yield


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server (moto) on 127.0.0.1, started and stopped by the tests."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test."""
    import boto3

    name = f"amp-ray-{request.node.name.lower().replace('_', '-')[:40]}-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def tiny_world_spec(run_dir: str, **overrides: object) -> dict:
    """A spec dict for a world of a few dozen images: the data stage takes seconds."""
    spec: dict = {
        "name": "tiny",
        "stages": ["data"],
        "storage": {"run_dir": run_dir},
        "data": {
            "source": "world",
            "world": {
                "splits": {
                    "sft": 40,
                    "preference": 10,
                    "eval_iid": 4,
                    "eval_bias_probe": 4,
                    "eval_control": 4,
                }
            },
            "actors": {"num_actors": 2, "num_cpus": 0.5, "batch_size": 16},
        },
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def world_items() -> list[dict]:
    """Items of a small world: 60 training images and 4 eval images."""
    from amp_ray.spec.blocks import WorldSpec
    from amp_ray.world import World

    splits = {"sft": 60, "preference": 0, "eval_iid": 4, "eval_bias_probe": 0, "eval_control": 0}
    world = World(WorldSpec(splits=splits))
    return [item for index in range(world.num_images) for item in world.items(index)]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, world_items: list[dict]) -> str:
    """A tiny LLaVA (untrained) with its processor, saved in HF format."""
    from amp_ray.models.tiny import create_tiny_model
    from amp_ray.spec.blocks import TinyLlavaSpec

    directory = tmp_path_factory.mktemp("tiny")
    texts = [t[k] for item in world_items for t in item["rounds"] for k in ("question", "answer")]
    create_tiny_model(directory, TinyLlavaSpec(), texts, image_size=32, seed=0)
    return str(directory)
