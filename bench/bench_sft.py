"""Wall time of the default SFT of all experts: the data and sft stages of jobs/demo.yaml.

    .venv/bin/python bench/bench_sft.py [key=value ...]

Runs both stages into a fresh temporary run directory on a local Ray sized to this machine and
prints each stage's summary (the world check table included) and its seconds. Extra arguments
override spec keys, e.g. sft.scaling.cpus_per_worker=2.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from amp_ray.pipeline import run_job
from amp_ray.spec import load_spec

SPEC = os.path.join(os.path.dirname(__file__), "..", "jobs", "demo.yaml")


def main() -> None:
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [f"storage.run_dir={run_dir}", "stages=[data, sft]", *sys.argv[1:]]
        spec = load_spec(SPEC, overrides)
        started = time.perf_counter()
        reports = run_job(spec)
        total = time.perf_counter() - started
    print(f"cpus: {os.cpu_count()}  runs: {', '.join(spec.sft.runs)}")
    for report in reports:
        print(f"{report.stage:<6} {report.seconds:7.1f} s")
    print(f"total  {total:7.1f} s (Ray start-up included)")


if __name__ == "__main__":
    main()
