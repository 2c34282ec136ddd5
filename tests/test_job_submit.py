"""`ray job submit` of an amp-ray spec to a real `ray start --head` on 127.0.0.1, as in README.md.

The head is this test's own: its own --temp-dir and ports, started with `--block` in a process
group of its own, stopped by SIGTERM to `ray start` and then SIGKILL to what is left of the
group. `ray stop` is never called: it stops every Ray process of the user on the machine, other
people's clusters included.

Authentication is token mode, as README.md tells users, with the token in a file of the test's
own that RAY_AUTH_TOKEN_PATH points at (on both the head and the submitting side): the user's
~/.ray/auth_token is neither read nor written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO, free_port, tiny_world_spec

from amp_ray.storage import RunDir

START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 300


@dataclass
class Head:
    ray: str  # the `ray` executable
    address: str  # the dashboard's HTTP address, for `ray job ...`
    env: dict[str, str]  # what a client on the head node needs: the auth mode and token path
    temp_dir: str


def ray_cli() -> str:
    """The venv's `ray` (beside this Python), else the one on PATH; skip if there is none."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        pytest.skip("the `ray` command is not installed (pip install 'ray[default]')")
    return found


def processes_of(markers: tuple[str, ...]) -> list[psutil.Process]:
    """Every live process whose command line names one of these paths (zombies have none)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or ()
        if any(marker in part for part in cmdline for marker in markers):
            found.append(process)
    return found


def wait_for_dashboard(url: str, token: str, head: subprocess.Popen, log: Path) -> None:
    request = urllib.request.Request(
        f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start --head did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[Head]:
    ray = ray_cli()
    # A short temp dir: Ray's Unix socket paths under it must stay within ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="amp-rh-", dir="/tmp")
    token = secrets.token_hex(32)
    token_path = tmp_path / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
    }
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM the head first drains the node for up to 30 s (for Serve on Kubernetes);
        # there is nothing to drain here, and 0 stops it at once.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        # the job's entrypoint inherits the head's environment: `amp-ray` must resolve there
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    dashboard_port = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    command = [
        ray,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    log = tmp_path / "ray-start.log"
    with open(log, "wb") as out:
        head = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{dashboard_port}"
        wait_for_dashboard(url, token, head, log)
        yield Head(ray=ray, address=url, env=env, temp_dir=temp_dir)
    finally:
        stop_head(head)
        # The raylet, GCS, dashboard and workers name the temp dir in their command lines, a
        # job's entrypoint names tmp_path: give them time to exit after the head's signal, then
        # kill what is left (it is ours) so that nothing outlives the test, and say so.
        markers = (temp_dir, f"{tmp_path}{os.sep}")
        deadline = time.monotonic() + 20
        while (left := processes_of(markers)) and time.monotonic() < deadline:
            time.sleep(0.5)
        names = []
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                names.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not names, "still running 20 s after the head stopped:\n" + "\n".join(names)


def stop_head(head: subprocess.Popen) -> None:
    """Stop the head as Ctrl-C on `ray start --block` would, then anything left of its group.

    SIGTERM to `ray start` alone: its handler stops the raylet first (which stops its workers),
    then the GCS and the rest; SIGKILL to the group then ends whatever did not exit.
    """
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)  # the group is ours alone (start_new_session)
    head.wait(timeout=10)


def ray_job(
    head: Head, command: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ray job COMMAND ARGS` against this head, as a user on the head node runs it."""
    options = ["--address", head.address, "--log-style=record", "--log-color=false"]
    return subprocess.run(
        [head.ray, "job", command, *options, *args],
        env=head.env if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for_job(head: Head, job_id: str) -> str:
    """Poll `ray job status` until the job ends; its final state, lower case."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    ended = re.compile(rf"Job '{job_id}' (succeeded|failed|was stopped)")
    while time.monotonic() < deadline:
        status = ray_job(head, "status", job_id)
        found = ended.search(status.stdout + status.stderr)
        if found:
            return found.group(1)
        time.sleep(3)
    return f"still not done after {JOB_TIMEOUT_S} s: {status.stdout}{status.stderr}"


def test_ray_job_submit_runs_the_data_stage_on_a_ray_head(ray_head: Head, tmp_path: Path) -> None:
    # The head checks tokens: a client that sends none is turned away with README.md's message.
    no_token = ray_job(ray_head, "list", env={**ray_head.env, "RAY_AUTH_MODE": "disabled"})
    assert no_token.returncode != 0
    assert "Missing authentication token" in no_token.stderr, no_token.stderr[-2000:]

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_world_spec("runs/tiny")))
    run_dir = tmp_path / "run"
    job_id = f"amp-ray-test-{secrets.token_hex(4)}"
    # README.md, "Running on a Ray cluster". The upload of the working dir leaves out .git, .venv
    # and what .gitignore names (runs/); the spec and the run dir are absolute paths on this
    # machine, which is the whole cluster.
    submitted = ray_job(
        ray_head,
        "submit",
        "--submission-id",
        job_id,
        "--working-dir",
        str(REPO),
        "--no-wait",
        "--",
        "amp-ray",
        "run",
        str(spec),
        f"storage.run_dir={run_dir}",
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
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
