"""Every shipped job spec under jobs/ validates with `amp-ray validate`, says in its header how to
run it, and validates without touching storage or the network; a misspelled key fails.

The specs are globbed, so a spec added later is checked too. The CLI runs in-process through
`amp_ray.cli.main(argv)`, which returns the exit code the console script exits with.
"""

from __future__ import annotations

import itertools
import socket
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
import yaml

from amp_ray.cli import main
from amp_ray.spec.load import load_spec
from amp_ray.storage.run import RunDir

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted((REPO / "jobs").glob("*.yaml"))
# the real-model reproductions: the glob must keep finding them
REPRODUCTIONS = (
    "amp_meg_llava15.yaml",
    "amp_ig_llava15.yaml",
    "bdhs_offline_llava16.yaml",
    "bdhs_online_llava16.yaml",
)


def validate(path: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`amp-ray validate PATH` in-process: (exit code, stdout, stderr)."""
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def header(path: Path) -> str:
    """The comment lines a spec opens with."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))


def test_the_reproduction_specs_are_shipped() -> None:
    assert set(REPRODUCTIONS) <= {path.name for path in JOBS}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_spec_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(path, capsys)
    assert code == 0, err
    assert out.startswith(f"ok: {path}: job ")


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_spec_header_says_how_to_run_it(path: Path) -> None:
    text = header(path)
    assert f"amp-ray run jobs/{path.name}" in text
    assert "ray job submit" in text


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"amp-ray validate must not {what} (called with {args!r})")

    return refuse


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_validate_opens_no_storage_and_no_connection(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Specs name s3:// run directories, data and benchmark files: checking one must not reach
    them (nor any other storage, nor the network)."""
    monkeypatch.setattr(socket.socket, "connect", _refuse("open a connection"))
    monkeypatch.setattr(socket, "create_connection", _refuse("open a connection"))
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("resolve a host name"))
    monkeypatch.setattr(fsspec.core, "url_to_fs", _refuse("open a filesystem"))
    monkeypatch.setattr(fsspec, "filesystem", _refuse("open a filesystem"))
    monkeypatch.setattr(RunDir, "open", _refuse("open the run directory"))
    # `from amp_ray.storage.location import open_location` binds the name in each module
    for name, module in list(sys.modules.items()):
        if name.startswith("amp_ray") and hasattr(module, "open_location"):
            monkeypatch.setattr(module, "open_location", _refuse("open a location"))
    code, _, err = validate(path, capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    ("block", "key", "typo", "message"),
    [
        (
            "training",
            "max_grad_norm",
            "max_grad_nrom",
            "training.max_grad_nrom: unknown key; allowed: policy, loss, beta,",
        ),
        (
            "evaluation.judge",
            "base_url",
            "base_uri",
            "evaluation.judge.base_uri: unknown key; allowed: kind, base_url,",
        ),
    ],
)
def test_a_misspelled_key_fails_with_exit_2_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    block: str,
    key: str,
    typo: str,
    message: str,
) -> None:
    raw = yaml.safe_load((REPO / "jobs" / "amp_meg_llava15.yaml").read_text(encoding="utf-8"))
    node = raw
    for part in block.split("."):
        node = node[part]
    node[typo] = node.pop(key)
    spec = tmp_path / "amp_meg_llava15.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    code, out, err = validate(spec, capsys)
    assert code == 2
    assert out == ""
    assert message in err
    assert f"did you mean {key!r}?" in err
    assert "Traceback" not in err


def _without(raw: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    out = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy
    for path in paths:
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node[part]
        node.pop(last, None)
    return out


@pytest.mark.parametrize(
    ("name", "own"),
    [
        # the sweep sets each trial's seed and evaluates each trial's models
        (
            "demo_seeds.yaml",
            ["name", "stages", "sweep", "training.compare.seeds", "evaluation.models"],
        ),
        (
            "sweep_beta_k.yaml",
            ["name", "stages", "sweep", "storage.run_dir", "training.compare", "evaluation.models"],
        ),
    ],
)
def test_the_world_sweeps_run_the_demo_s_settings(name: str, own: list[str]) -> None:
    """The sweep specs repeat jobs/demo.yaml's world, models and recipes (a spec has no
    includes): they may differ only in what makes them a sweep."""
    demo = yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text(encoding="utf-8"))
    sweep = yaml.safe_load((REPO / "jobs" / name).read_text(encoding="utf-8"))
    assert _without(sweep, own) == _without(demo, own)
    assert "train" not in sweep["stages"] and "sweep" in sweep["stages"]


def test_the_dialogue_ablation_runs_the_demo_s_settings_and_its_options() -> None:
    """jobs/ablation_dialogue.yaml is jobs/demo.yaml with a validation split, its own run
    directory, more arms and their models evaluated; the demo's recipe and arms are among them."""
    demo = yaml.safe_load((REPO / "jobs" / "demo.yaml").read_text(encoding="utf-8"))
    ablation = yaml.safe_load((REPO / "jobs" / "ablation_dialogue.yaml").read_text("utf-8"))
    own = [
        "name",
        "storage.run_dir",
        "data.world.splits.validation",
        "training.compare.arms",
        "evaluation.models",
    ]
    assert _without(ablation, own) == _without(demo, own)
    assert ablation["data"]["world"]["splits"]["validation"] > 0
    arms = ablation["training"]["compare"]["arms"]
    assert demo["training"]["compare"]["arms"].items() <= arms.items()
    spec = load_spec(REPO / "jobs" / "ablation_dialogue.yaml")
    trained = {spec.training.name, *arms}
    options = {
        (r.dialogue_pairs, r.round_weight_step, r.sft_weight)
        for r in map(spec.training.arm, trained)
        if r.loss == "mdpo"
    }
    assert len(options) == len(trained) - 2  # every MDPO arm a different option
    named = {m.split("-seed")[0] for m in spec.evaluation.models} - {spec.training.policy}
    assert named == trained


def test_the_paper_spec_on_vllm_in_docs_validates_on_the_aws_node_types(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/cluster.md's `amp-ray validate` line for MEG on vLLM, run as it is written there."""
    monkeypatch.chdir(REPO)
    text = (REPO / "docs" / "cluster.md").read_text(encoding="utf-8")
    [line] = [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith("amp-ray validate") and "generation.engine=vllm" in line
    ]
    code = main(line.split()[1:])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "fit the node types of cluster/aws.yaml" in out
