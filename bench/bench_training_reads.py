"""Reading a training step's rows: a reader made per step against one kept for the run.

    .venv/bin/python bench/bench_training_reads.py [--rows 10000] [--files 20] [--batch 64]
    .venv/bin/python bench/bench_training_reads.py --encoded runs/demo/sft/encoded-*/_attempt-*

Writes encoded-like files as the sft stage does (one row per Parquet row group; the world's ~1
KB PNG, token ids), then reads random global batches of `--batch` rows the way a training input
actor does (training.inputs.encoded_reader, a storage.batches.RowReader): with a new reader per
step, which parses every file's footer again (what the actor did before it kept one), and with
one reader kept across steps, which keeps the footers. Prints ms per step for both and their
ratio, side by side in one run. `--encoded DIR` reads a run's own encoded files (every .parquet
under DIR) instead.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from amp_ray.storage.batches import PLACES
from amp_ray.training.inputs import encoded_reader


def write_files(directory: str, rows: int, files: int) -> list[str]:
    rng = random.Random(0)
    paths, per_file = [], rows // files
    for file in range(files):
        table = pa.table(
            {
                "item_id": [f"item-{file}-{row}" for row in range(per_file)],
                "image": [rng.randbytes(1000) for _ in range(per_file)],
                "input_ids": [[rng.randrange(64) for _ in range(48)] for _ in range(per_file)],
            }
        )
        path = os.path.join(directory, f"part-{file:05d}.parquet")
        pq.write_table(table, path, row_group_size=1)
        paths.append(path)
    return paths


def per_step_ms(paths: list[str], rows: list[int], batch: int, steps: int, keep: bool) -> float:
    """ms a step of `batch` random rows over `paths` (`rows`: each file's row count)."""
    rng = random.Random(1)
    kept = encoded_reader(paths)
    started = time.perf_counter()
    for _ in range(steps):
        files = [rng.randrange(len(paths)) for _ in range(batch)]
        places = [(file, rng.randrange(rows[file])) for file in files]
        table = pa.table(
            {"file": [f for f, _ in places], "row": [r for _, r in places]}, schema=PLACES
        )
        (kept if keep else encoded_reader(paths)).read(table)
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--encoded", help="a folder of encoded Parquet files to read instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        if args.encoded:
            paths = sorted(glob.glob(os.path.join(args.encoded, "**/*.parquet"), recursive=True))
        else:
            paths = write_files(directory, args.rows, args.files)
        rows = [pq.ParquetFile(path).metadata.num_rows for path in paths]
        fresh = per_step_ms(paths, rows, args.batch, args.steps, keep=False)
        kept = per_step_ms(paths, rows, args.batch, args.steps, keep=True)
        groups = sum(pq.ParquetFile(path).metadata.num_row_groups for path in paths)
    print(f"{sum(rows)} rows in {len(paths)} files ({groups} row groups); {args.batch} rows a step")
    print(f"reader per step   {fresh:8.1f} ms a step")
    print(f"reader kept       {kept:8.1f} ms a step   ({fresh / kept:.1f}x faster)")


if __name__ == "__main__":
    main()
