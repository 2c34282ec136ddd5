"""A real `ray start --head` of a test's own on 127.0.0.1, and `ray job` against it.

The head has its own --temp-dir and ports and runs with `--block` in a process group of its own;
it is stopped by SIGTERM to `ray start` and then SIGKILL to what is left of the group. `ray stop`
is never called: it stops every Ray process of the user on the machine, other clusters included.
With `autoscaling_config` the head also runs Ray's fake multi-node autoscaler (provider
`fake_multinode`, as Ray's own autoscaler tests use): worker nodes are raylets it starts on this
machine when work asks for their resources, and stops after their idle timeout.
"""

from __future__ import annotations

import contextlib
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
from conftest import REPO, free_port

START_TIMEOUT_S = 90


@dataclass
class Head:
    ray: str  # the `ray` executable
    address: str  # the dashboard's HTTP address, for `ray job ...`
    gcs_address: str  # for drivers that connect directly (ray.init(address=...))
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


def wait_for_dashboard(url: str, token: str | None, head: subprocess.Popen, log: Path) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/api/version", headers=headers)
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


@contextlib.contextmanager
def started_head(
    tmp_path: Path,
    num_cpus: int = 2,
    token: bool = True,
    autoscaling_config: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Head]:
    """A head of this test's own; token authentication (a token file of the test's own that
    RAY_AUTH_TOKEN_PATH points at) unless `token` is False."""
    ray = ray_cli()
    # A short temp dir: Ray's Unix socket paths under it must stay within ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="amp-rh-", dir="/tmp")
    head_env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
    }
    secret = secrets.token_hex(32) if token else None
    if secret:
        token_path = tmp_path / "auth_token"
        token_path.write_text(secret)
        token_path.chmod(0o600)
        head_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    else:
        head_env["RAY_AUTH_MODE"] = "disabled"
    head_env.update(
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM the head first drains the node for up to 30 s (for Serve on Kubernetes);
        # there is nothing to drain here, and 0 stops it at once.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        # the job's entrypoint inherits the head's environment: `amp-ray` must resolve there
        PATH=os.pathsep.join([str(Path(sys.executable).parent), head_env.get("PATH", "")]),
        **(env or {}),
    )
    dashboard_port, gcs_port = free_port(), free_port()
    ports = {
        "--port": gcs_port,
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
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    if autoscaling_config is not None:
        # the fake provider's nodes dial the GCS at the config's gcs_address
        text = autoscaling_config.read_text().replace("GCS_PORT", str(gcs_port))
        autoscaling_config.write_text(text)
        command.append(f"--autoscaling-config={autoscaling_config}")
        head_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    log = tmp_path / "ray-start.log"
    with open(log, "wb") as out:
        head = subprocess.Popen(
            command, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{dashboard_port}"
        wait_for_dashboard(url, secret, head, log)
        yield Head(ray, url, f"127.0.0.1:{gcs_port}", head_env, temp_dir)
    finally:
        stop_head(head)
        # The raylets, GCS, dashboard and workers name the temp dir in their command lines, a
        # job's entrypoint names tmp_path: give them time to exit after the head's signal, then
        # kill what is left (it is ours) so that nothing outlives the test, and say so.
        markers = (temp_dir, f"{tmp_path}{os.sep}")
        deadline = time.monotonic() + 30
        while (left := processes_of(markers)) and time.monotonic() < deadline:
            time.sleep(0.5)
        names = []
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                names.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not names, "still running 30 s after the head stopped:\n" + "\n".join(names)


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


def submit_amp_ray(head: Head, *amp_ray_args: str, working_dir: Path | None = REPO) -> str:
    """`ray job submit --working-dir REPO -- amp-ray ARGS` without waiting; the job id. The
    upload of the working dir leaves out .git, .venv and what .gitignore names (runs/)."""
    job_id = f"amp-ray-test-{secrets.token_hex(4)}"
    upload = ["--working-dir", str(working_dir)] if working_dir else []
    submitted = ray_job(
        head,
        "submit",
        "--submission-id",
        job_id,
        *upload,
        "--no-wait",
        "--",
        "amp-ray",
        *amp_ray_args,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    return job_id


def wait_for_job(head: Head, job_id: str, timeout_s: float = 300) -> str:
    """Poll `ray job status` until the job ends; its final state, lower case."""
    deadline = time.monotonic() + timeout_s
    ended = re.compile(rf"Job '{job_id}' (succeeded|failed|was stopped)")
    while time.monotonic() < deadline:
        status = ray_job(head, "status", job_id)
        found = ended.search(status.stdout + status.stderr)
        if found:
            return found.group(1)
        time.sleep(3)
    return f"still not done after {timeout_s} s: {status.stdout}{status.stderr}"
