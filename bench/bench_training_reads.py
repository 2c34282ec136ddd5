"""Reading a training step's rows: a reader made per step against one kept for the run.

    .venv/bin/python bench/bench_training_reads.py [--rows 10000] [--files 20] [--batch 64]

Writes encoded-like files as the sft stage does (one row per Parquet row group; the world's
~1 KB PNG, token ids), then reads random global batches of `--batch` rows the way a training
input actor does (storage.batches.RowReader): with a new reader per step, which parses every
file's footer again (what the actor did before it kept one), and with one reader kept across
steps, which keeps the footers. Prints ms per step for both and their ratio, side by side in
one run.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from amp_ray.storage.batches import PLACES, RowReader


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


def per_step_ms(paths: list[str], per_file: int, batch: int, steps: int, keep: bool) -> float:
    rng = random.Random(1)
    kept = RowReader(lambda file: pa.OSFile(paths[file]))
    started = time.perf_counter()
    for _ in range(steps):
        places = [(rng.randrange(len(paths)), rng.randrange(per_file)) for _ in range(batch)]
        table = pa.table(
            {"file": [f for f, _ in places], "row": [r for _, r in places]}, schema=PLACES
        )
        (kept if keep else RowReader(lambda file: pa.OSFile(paths[file]))).read(table)
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        paths = write_files(directory, args.rows, args.files)
        per_file = args.rows // args.files
        fresh = per_step_ms(paths, per_file, args.batch, args.steps, keep=False)
        kept = per_step_ms(paths, per_file, args.batch, args.steps, keep=True)
    print(f"{args.rows} rows in {args.files} files, a row per row group; {args.batch} rows a step")
    print(f"reader per step   {fresh:8.1f} ms a step")
    print(f"reader kept       {kept:8.1f} ms a step   ({fresh / kept:.1f}x faster)")


if __name__ == "__main__":
    main()
