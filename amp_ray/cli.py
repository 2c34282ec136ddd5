"""The `amp-ray` command: validate a job spec, run it, describe the run formats.

    amp-ray validate SPEC [--cluster CLUSTER_YAML] [dotted.key=value ...]
    amp-ray run SPEC [--stage NAME] [--force] [--cluster CLUSTER_YAML] [dotted.key=value ...]
    amp-ray schemas
    amp-ray export --format {amp_json,trl_dpo,pairs} [--pairs MODE] RUN_DIR DEST
    amp-ray report RUN [RUN ...] [--out DIR]

Problems a user can fix end with one message and a non-zero exit (2 for a bad spec, 1 for the
rest), no traceback unless --debug is given.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from amp_ray import __version__
from amp_ray.errors import AmpRayError


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="amp-ray",
        description="Multi-level preference alignment of vision-language models on Ray.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"amp-ray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate", parents=[common], help="check a job spec; start nothing"
    )
    validate.add_argument("spec", help="job spec (YAML)")
    validate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    validate.add_argument(
        "--cluster",
        metavar="CLUSTER_YAML",
        help="also check every stage's actors and workers against this cluster's node types",
    )
    validate.set_defaults(func=cmd_validate)

    run = commands.add_parser("run", parents=[common], help="run a job spec's stages")
    run.add_argument("spec", help="job spec (YAML)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    run.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this stage (repeatable)",
    )
    run.add_argument("--force", action="store_true", help="redo stages that are complete")
    run.add_argument(
        "--cluster",
        metavar="CLUSTER_YAML",
        help="the cluster's launcher YAML (runtime.cluster_config): checked before any stage "
        "runs, and the node types named when waiting for the autoscaler",
    )
    run.add_argument(
        "--verbose", action="store_true", help="show Ray's logs and per-operator progress"
    )
    run.set_defaults(func=cmd_run)

    schemas = commands.add_parser(
        "schemas", parents=[common], help="print the run's dataset schemas"
    )
    schemas.set_defaults(func=cmd_schemas)

    export = commands.add_parser(
        "export",
        parents=[common],
        help="write a run's preferences as AMP JSON, TRL DPO Parquet or pairs (docs/formats.md)",
    )
    export.add_argument("--format", required=True, choices=["amp_json", "trl_dpo", "pairs"])
    export.add_argument(
        "--pairs",
        default="all",
        choices=["all", "best_vs_rest", "adjacent"],
        help="pairs of levels that a K-level item expands to in trl_dpo and pairs (default: all)",
    )
    export.add_argument("run_dir", help="run directory (local path or s3://...)")
    export.add_argument("dest", help="file to write: .json (amp_json, pairs) or .parquet (trl_dpo)")
    export.set_defaults(func=cmd_export)

    report = commands.add_parser(
        "report",
        parents=[common],
        help="write a Markdown and HTML report of runs' metrics with training plots",
    )
    report.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directory (local path or s3://...)"
    )
    report.add_argument("--out", metavar="DIR", help="where to write (default: <first RUN>/report)")
    report.set_defaults(func=cmd_report)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from amp_ray.pipeline import check_cluster, select_stages

    spec = _load(args)
    stages = select_stages(spec)
    cluster = check_cluster(spec, stages)
    print(
        f"ok: {args.spec}: job {spec.name!r}, stages {', '.join(stages)}, "
        f"run_dir {spec.storage.run_dir}{cluster}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from amp_ray.pipeline import run_job

    run_job(_load(args), only=args.stage, force=args.force, verbose=args.verbose)
    return 0


def _load(args: argparse.Namespace) -> Any:
    """The spec with its overrides; --cluster is runtime.cluster_config."""
    from amp_ray.spec import load_spec

    overrides = list(args.overrides)
    if args.cluster:
        overrides.append(f"runtime.cluster_config={args.cluster}")
    return load_spec(args.spec, overrides)


def cmd_schemas(args: argparse.Namespace) -> int:
    from amp_ray.storage.schemas import schemas_markdown

    print(schemas_markdown())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the newest committed preferences: reference/, else rank/, else data/."""
    from amp_ray.data.export import export_preferences
    from amp_ray.errors import DataError, StorageError
    from amp_ray.storage import RunDir
    from amp_ray.storage.schemas import ITEM_FIELDS

    run = RunDir.open(args.run_dir, check=False)
    if not run.location.exists():
        raise StorageError(f"run directory {args.run_dir} does not exist", hint="check RUN_DIR")
    for stage in ("reference", "rank", "data"):
        dataset = run.dataset(stage, "preferences")
        if dataset.exists:
            break
    else:
        raise DataError(
            f"{run.uri} holds no committed preferences (reference/, rank/ or data/preferences)",
            hint="run the rank stage first, or import preference data (data.source: amp_json, "
            "trl_dpo or pairs)",
        )
    table = dataset.read_table([*ITEM_FIELDS, "levels"])
    report = export_preferences(table, args.format, args.dest, args.pairs)
    images = f", {len(report.images)} image files under images/" if report.images else ""
    print(
        f"exported {report.items} items of {stage}/preferences as {report.records} {args.format} "
        f"records to {report.dest}{images}"
    )
    for skipped, what in (
        (report.skipped, "items the format cannot hold"),
        (report.skipped_pairs, "pairs of levels that would teach nothing"),
    ):
        if skipped:
            print(f"skipped {len(skipped)} {what}:", file=sys.stderr)
            for key, reason in skipped[:5]:  # the first five, by item or pair id
                print(f"  {key}: {reason}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the headline table, write the report, and say where."""
    import posixpath

    from amp_ray.report.document import write_report

    out = args.out or posixpath.join(args.runs[0].rstrip("/"), "report")
    paths = write_report(args.runs, out)
    print("\n".join(paths.headline))
    print(f"wrote {paths.markdown}, {paths.html} and {len(paths.images)} plots:")
    for path in paths.images.values():
        print(f"  {path}")
    for name, why in paths.skipped.items():
        print(f"  skipped {name}: {why}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may also follow options (`validate SPEC --cluster X key=value`): argparse leaves
    # a positional list that an option interrupted to parse_known_args
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in x or x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("amp-ray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        user_error = find_user_error(exc)
        if args.debug or user_error is None:
            traceback.print_exc()
        if user_error is None:
            print(f"amp-ray: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"amp-ray: error: {user_error}", file=sys.stderr)
        return user_error.exit_code


def find_user_error(exc: BaseException) -> AmpRayError | None:
    """The AmpRayError behind `exc`, also when it crossed a Ray task or actor boundary."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AmpRayError) and hasattr(current, "message"):
            return current
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


if __name__ == "__main__":
    sys.exit(main())
