"""The run report: its tables hold exactly the datasets' values, evaluate's over train's over
sft's; its plots are real PNGs, and a plot without data is skipped with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from amp_ray.cli import main
from amp_ray.report.document import HEADLINE, headline_lines, load, write_report
from amp_ray.report.plots import headline_panels
from amp_ray.spec.blocks import StorageSpec
from amp_ray.storage import RunDir, open_location
from amp_ray.storage.schemas import SCHEMAS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ("sft", "train", "evaluate")


def metric(model: str, benchmark: str, split: str, name: str, value: float, count: int = 10):
    return dict(
        model=model, benchmark=benchmark, split=split, metric=name, value=value, count=count
    )


def world(model: str, chair_i: float, chair_s: float) -> list[dict]:
    return [
        metric(model, "chair", "eval_iid", "chair_i", chair_i),
        metric(model, "chair", "eval_iid", "chair_s", chair_s),
        metric(model, "chair", "eval_iid", "recall", 0.7),
        metric(model, "pope", "eval_iid", "f1", 0.81),
        metric(model, "pope_adversarial", "eval_bias_probe", "f1", 0.62, 6),
        metric(model, "bias", "eval_bias_probe", "partner_rate", 0.4),
    ]


def mrhal(model: str, score: float, rate: float, failed: int) -> list[dict]:
    return [
        metric(model, "mrhal", "eval_iid", "score_cumulative", score, 8),
        metric(model, "mrhal", "eval_iid", "hallucination_rate_cumulative", rate, 8),
        metric(model, "mrhal", "eval_iid", "score_mean", score + 0.1, 8),
        metric(model, "mrhal", "eval_iid", "failed", failed, 8),
        metric(model, "mrhal", "eval_iid", "score@attribute", score - 0.5, 4),
        metric(model, "mrhal", "eval_iid", "score@counting", score + 0.5, 4),
        metric(model, "mrhal", "eval_iid", "hallucination_rate@attribute", rate / 2, 4),
    ]


def write(run: RunDir, stage: str, name: str, schema: str, rows: list[dict]) -> None:
    writer = run.writer(stage, name, schema)
    writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[schema]))
    writer.commit()


def make_run(path: Path | str, *, log: bool = True, storage: StorageSpec | None = None):
    """sft: base and sft; train: its starting policy and two trained models; evaluate: mrhal,
    mmhal and a CHAIR_s that shadows train's. sft's chair_i is shadowed by train's."""
    run = RunDir.open(str(path), storage)
    write(run, "sft", "metrics", "metrics", world("base", 0.30, 0.50) + world("sft", 0.20, 0.40))
    trained = world("sft", 0.21, 0.41) + world("mdpo-s0", 0.10, 0.20) + world("dpo-s0", 0.15, 0.3)
    write(run, "train", "metrics", "metrics", trained + mrhal("mdpo-s0", 3.9, 0.35, 0))
    evaluated = mrhal("mdpo-s0", 4.25, 0.125, 2) + mrhal("dpo-s0", 3.5, 0.25, 0)
    evaluated += [
        metric("mdpo-s0", "chair", "eval_iid", "chair_s", 0.18, 12),
        metric("mdpo-s0", "mmhal", "mmhal", "score", 3.1, 96),
        metric("mdpo-s0", "mmhal", "mmhal", "hallucination_rate", 0.45, 96),
        metric("mdpo-s0", "mmhal", "mmhal", "failed", 0, 96),
        metric("mdpo-s0", "mmhal", "mmhal", "score@adversarial", 2.5, 12),
    ]
    write(run, "evaluate", "metrics", "metrics", evaluated)
    if log:
        rows = [
            dict(model=model, step=step, metric=name, value=base / (step + 1) + offset)
            for model, base in (("mdpo-s0", 1.0), ("dpo-s0", 0.8))
            for step in range(1, 5)
            for name, offset in (("loss", 0.0), ("accuracy/0-1", 0.2), ("accuracy/0-2", 0.1))
        ]
        write(run, "train", "log", "training_log", rows)
        runs = [
            dict(model=m, arm=arm, seed=0, steps=4, budget="steps", step_seconds=0.1, final_loss=0)
            for m, arm in (("mdpo-s0", "mdpo"), ("dpo-s0", "dpo"))
        ]
        write(run, "train", "runs", "training_runs", runs)
    return path


def expected(path: Path) -> dict[tuple[str, str, str, str], dict]:
    """The datasets' rows by key, each stage overwriting the one before it."""
    run = RunDir.open(str(path), check=False)
    values: dict[tuple[str, str, str, str], dict] = {}
    for stage in STAGES:
        dataset = run.dataset(stage, "metrics")
        if dataset.exists:
            for row in dataset.read_table().to_pylist():
                key = (row["model"], row["benchmark"], row["split"], row["metric"])
                values[key] = {**row, "stage": stage}
    return values


def cell(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return str(round(value)) if name == "failed" else f"{value:.3f}"


def md_table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The first pipe table after `heading`, parsed back to header and rows."""
    lines = text.split(heading + "\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    header, rule, *rows = table
    assert set(rule) == {"---"}
    return header, rows


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("report")
    run = make_run(root / "demo")
    return run, write_report([str(run)], str(root / "out"))


def test_the_plots_are_png_files(report) -> None:
    _, paths = report
    assert set(paths.images) == {
        "training_loss",
        "pair_accuracy",
        "headline_metrics",
        "score_by_type",
    }
    assert not paths.skipped
    for image in paths.images.values():
        data = Path(image).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    text = Path(paths.markdown).read_text()
    for name in paths.images:
        assert f"]({name}.png)" in text  # linked relative to the report


def test_headline_cells_are_the_datasets_values_evaluate_over_train_over_sft(report) -> None:
    run, paths = report
    values = expected(run)
    header, rows = md_table(Path(paths.markdown).read_text(), "## Every headline metric, by model")
    assert header[:2] == ["run", "model"]
    titles = header[2:]
    # the headline columns come in HEADLINE's order, each with a split the data has
    assert titles[:3] == [
        "mrhal/eval_iid/score_cumulative",
        "mrhal/eval_iid/hallucination_rate_cumulative",
        "mrhal/eval_iid/failed",
    ]
    shown = {tuple(t.split("/")[::2]) for t in titles}
    assert {(b, m) for _, b, m, _ in HEADLINE} <= shown
    assert "pope_adversarial/eval_bias_probe/f1" not in titles  # not a headline split
    assert [row[1] for row in rows] == ["base", "sft", "mdpo-s0", "dpo-s0"]
    for row in rows:
        assert row[0] == "demo"
        for title, got in zip(titles, row[2:], strict=True):
            benchmark, split, name = title.split("/")
            found = values.get((row[1], benchmark, split, name))
            assert got == cell(name, found and found["value"]), (row[1], title)
    by_model = {row[1]: dict(zip(titles, row[2:], strict=True)) for row in rows}
    assert by_model["mdpo-s0"]["chair/eval_iid/chair_s"] == "0.180"  # evaluate over train
    assert by_model["mdpo-s0"]["mrhal/eval_iid/score_cumulative"] == "4.250"
    assert by_model["sft"]["chair/eval_iid/chair_i"] == "0.210"  # train over sft
    assert by_model["base"]["chair/eval_iid/chair_i"] == "0.300"
    assert by_model["mdpo-s0"]["mrhal/eval_iid/failed"] == "2"


def test_the_long_table_has_every_value_with_its_count_and_stage(report) -> None:
    run, paths = report
    values = expected(run)
    text = Path(paths.markdown).read_text()
    header, rows = md_table(text, "## All metrics with counts")
    assert header == ["run", "model", "benchmark", "split", "metric", "value", "count", "stage"]
    assert len(rows) == len(values)
    for _, model, benchmark, split, name, value, count, stage in rows:
        failed = re.fullmatch(r"(\w+) \((\d+) failed\)", benchmark)
        if failed:
            benchmark = failed.group(1)
            assert values[(model, benchmark, split, "failed")]["value"] == int(failed.group(2))
        row = values[(model, benchmark, split, name)]
        assert (value, count, stage) == (cell(name, row["value"]), str(row["count"]), row["stage"])
    assert "| demo | mdpo-s0 | mrhal (2 failed) | eval_iid | score_cumulative |" in text
    assert "| demo | dpo-s0 | mrhal | eval_iid |" in text  # no failures, no note
    assert "evaluate/metrics is shown over train/metrics over sft/metrics" in text
    assert "chair/eval_iid/chair_s: evaluate 0.180 shown over train 0.200" in text


def test_html_is_standalone_and_holds_the_values(report) -> None:
    run, paths = report
    page = Path(paths.html).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    for name in paths.images:
        assert f'<img src="{name}.png"' in page
    for row in expected(run).values():
        assert f"<td>{cell(row['metric'], row['value'])}</td>" in page
    assert "<td>mrhal (2 failed)</td>" in page


def test_a_run_without_train_log_skips_the_training_plots(tmp_path: Path) -> None:
    run = make_run(tmp_path / "plain", log=False)
    paths = write_report([str(run)], str(tmp_path / "out"))
    assert set(paths.skipped) == {"training_loss", "pair_accuracy"}
    assert set(paths.images) == {"headline_metrics", "score_by_type"}
    text = Path(paths.markdown).read_text()
    assert "Training loss: skipped, no train/log in plain" in text
    assert "Reward accuracy per level pair: skipped, no train/log in plain" in text
    assert not (tmp_path / "out" / "training_loss.png").exists()


def test_two_runs_keep_their_models_apart(tmp_path: Path) -> None:
    first = make_run(tmp_path / "a")
    second = make_run(tmp_path / "b", log=False)
    paths = write_report([str(first), str(second)], str(tmp_path / "out"))
    _, rows = md_table(Path(paths.markdown).read_text(), "## Every headline metric, by model")
    assert [(r[0], r[1]) for r in rows][:5] == [
        ("a", "base"),
        ("a", "sft"),
        ("a", "mdpo-s0"),
        ("a", "dpo-s0"),
        ("b", "base"),
    ]
    assert "pair_accuracy" in paths.images  # drawn from the run that has a log
    assert "Runs without train/log, not drawn: b." in Path(paths.markdown).read_text()
    lines = headline_lines([str(first), str(second)])
    assert lines[0].split()[:3] == ["model", "cooccur", "CHAIR_i"]
    assert any(line.startswith("b/mdpo-s0 ") and " 4.250 " in line for line in lines)


def test_the_terminal_headline_shows_the_evaluated_models_one_column_per_metric(
    tmp_path: Path,
) -> None:
    run = RunDir.open(str(tmp_path / "run"))
    write(run, "sft", "metrics", "metrics", world("base", 0.30, 0.50) + world("other", 0.2, 0.4))
    rated = [
        *world("base", 0.31, 0.5),
        *world("mdpo", 0.12, 0.2),
        metric("base", "mrhal", "eval_iid", "hallucination_rate_cumulative", 0.5, 30),
        metric("base", "mrhal", "eval_control", "hallucination_rate_cumulative", 0.3, 10),
        metric("mdpo", "mrhal", "eval_iid", "hallucination_rate_cumulative", 0.2, 30),
        metric("mdpo", "mrhal", "eval_control", "hallucination_rate_cumulative", 0.6, 10),
        metric("mdpo", "mrhal", "eval_iid", "failed", 2, 30),
    ]
    write(run, "evaluate", "metrics", "metrics", rated)
    lines = headline_lines([str(run.uri)])
    header, *rows = [line.split() for line in lines[:3]]
    assert header == ["model", "cooccur", "CHAIR_i", "recall", "POPE_F1", "MRHal_hal", "failed"]
    # evaluated models only (not the SFT model the world check saw); MRHal_hal weighted by items
    assert rows == [
        ["base", "0.400", "0.310", "0.700", "0.810", f"{(0.5 * 30 + 0.3 * 10) / 40:.3f}", "0"],
        ["mdpo", "0.400", "0.120", "0.700", "0.810", f"{(0.2 * 30 + 0.6 * 10) / 40:.3f}", "2"],
    ]
    legend = " ".join(" ".join(line.split()) for line in lines[3:])
    assert "MRHal_hal = mrhal/hallucination_rate_cumulative (mean over eval_control, eval_iid)" in (
        legend
    )


def test_the_report_opens_with_the_terminal_headline(report) -> None:
    _, paths = report
    text = Path(paths.markdown).read_text()
    assert text.index("## Headline") < text.index("## Runs") < text.index("## Every headline")
    header, rows = md_table(text, "## Headline")
    assert header[0] == "model" and "CHAIR_i" in header and len(header) <= 10
    assert [row[0] for row in rows] == ["mdpo-s0", "dpo-s0"]  # the evaluated models


def seeds_run(path: Path) -> RunDir:
    """base, and mdpo and a control at seeds 0-2, every metric but two alike."""
    run = RunDir.open(str(path))
    cooccur = {"mdpo": (0.30, 0.34, 0.32), "control": (0.40, 0.41, 0.42)}
    chair_i = {"mdpo": (0.10, 0.20, 0.15), "control": (0.15, 0.12, 0.16)}
    rows = world("base", 0.3, 0.5)
    runs = []
    for arm in ("mdpo", "control"):
        for seed in range(3):
            model = f"{arm}-seed{seed}"
            for row in world(model, chair_i[arm][seed], 0.2):
                if row["metric"] == "partner_rate":
                    row["value"] = cooccur[arm][seed]
                rows.append(row)
            runs.append(dict(model=model, arm=arm, seed=seed, steps=2, budget="steps"))
    write(run, "evaluate", "metrics", "metrics", rows)
    runs = [{**r, "step_seconds": 0.1, "final_loss": 0.5} for r in runs]
    write(run, "train", "runs", "training_runs", runs)
    return run


def test_recipes_over_seeds_show_mean_sd_and_paired_differences_with_intervals(
    tmp_path: Path,
) -> None:
    run = seeds_run(tmp_path / "seeds")
    lines = headline_lines([str(run.uri)])
    summary = lines[: lines.index("")]  # then the paired differences
    table = {line.split()[0]: line.split()[1:] for line in summary}
    assert table["recipe"][:3] == ["seeds", "cooccur", "CHAIR_i"]
    assert table["base"][:3] == ["1", "0.400", "0.300"]
    assert table["mdpo"][:3] == ["3", "0.320±0.020", "0.150±0.050"]
    assert table["control"][:2] == ["3", "0.410±0.010"]
    # mdpo − control per seed: cooccur −0.10, −0.07, −0.10: mean −0.090, sd 0.01732;
    # t(0.975, 2) = 4.3027: half-width 4.3027 · 0.01732 / √3 = 0.043, outside noise.
    # CHAIR_i −0.05, +0.08, −0.01: mean +0.007, an interval around 0: within noise (~)
    difference = next(line.split() for line in lines if line.startswith("mdpo − control"))
    assert difference[3:5] == ["-0.090±0.043", "+0.007±0.165~"]
    text = Path(write_report([str(run.uri)], str(tmp_path / "out")).markdown).read_text()
    header, rows = md_table(text, "## Headline")
    assert header[:3] == ["recipe", "seeds", "cooccur"] and rows[1][:3] == [
        "mdpo",
        "3",
        "0.320±0.020",
    ]
    assert "| mdpo − control | -0.090±0.043 | +0.007±0.165~ |" in text
    assert "within noise" in text
    # the headline plot: one panel per metric, every recipe on it with its seeds' values
    panels = dict(headline_panels(load([str(run.uri)])))
    cooccur = next(bars for legend, bars in panels.items() if legend.startswith("cooccur ="))
    assert cooccur == [
        ("base", [0.4]),
        ("mdpo", pytest.approx([0.30, 0.34, 0.32])),
        ("control", pytest.approx([0.40, 0.41, 0.42])),
    ]
    assert all(len(bars) == 3 for bars in panels.values())


def test_many_models_are_drawn_as_arm_means(tmp_path: Path) -> None:
    run = RunDir.open(str(tmp_path / "many"))
    models = [(f"{arm}-s{seed}", arm) for arm in ("mdpo", "dpo") for seed in range(5)]
    write(run, "train", "metrics", "metrics", [r for m, _ in models for r in world(m, 0.1, 0.2)])
    log = [
        dict(model=m, step=s, metric=name, value=0.5)
        for m, _ in models
        for s in (1, 2)
        for name in ("loss", "accuracy/0-1")
    ]
    write(run, "train", "log", "training_log", log)
    runs = [dict(model=m, arm=arm, seed=0, steps=2, budget="steps") for m, arm in models]
    write(
        run,
        "train",
        "runs",
        "training_runs",
        [{**r, "step_seconds": 0.1, "final_loss": 0.5} for r in runs],
    )
    paths = write_report([str(run.uri)], str(tmp_path / "out"))
    text = Path(paths.markdown).read_text()
    assert "10 models are too many to draw one by one" in text
    assert "score_by_type" in paths.skipped  # no mrhal or mmhal here


def test_the_cli_prints_the_headline_and_writes_under_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path / "demo")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["model", "cooccur", "CHAIR_i"]
    assert re.search(r"^mdpo-s0 .* 4\.250 +0\.125 .* 2$", out, re.M)  # 2 failed items
    assert f"wrote {run / 'report' / 'report.md'}" in out
    assert (run / "report" / "report.html").exists()
    assert main(["report", str(tmp_path / "absent")]) == 1
    assert "run directory" in capsys.readouterr().err


def test_runs_and_report_on_s3(s3_endpoint: str, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/runs/demo"
    storage = StorageSpec(run_dir=uri, endpoint_url=s3_endpoint)
    make_run(uri, storage=storage)
    paths = write_report([uri], f"{uri}/report", storage)
    assert paths.markdown == f"{uri}/report/report.md" and len(paths.images) == 4
    text = open_location(paths.markdown, storage).read_bytes().decode()
    assert "| demo | mdpo-s0 | 4.250 | 0.125 | 2 |" in text
    for image in paths.images.values():
        assert open_location(image, storage).read_bytes().startswith(PNG_MAGIC)


def test_the_validation_split_chooses_a_recipe_and_stays_out_of_the_headline(
    tmp_path: Path,
) -> None:
    """MRHal on eval_iid and on the validation split: the headline's MRHal_hal reads eval_iid
    alone; the recipe with the lowest validation MRHal_hal (mdpo here, though control is lower
    on eval_iid) is the one chosen, in the terminal and the report."""
    run = seeds_run(tmp_path / "seeds")
    rates = {"mdpo": ((0.30, 0.10), (0.32, 0.12), (0.31, 0.11)), "control": ((0.2, 0.3),) * 3}
    rows = []
    for arm, per_seed in rates.items():
        for seed, (iid, validation) in enumerate(per_seed):
            model = f"{arm}-seed{seed}"
            rate = "hallucination_rate_cumulative"
            rows += [
                metric(model, "mrhal", "eval_iid", rate, iid, 8),
                metric(model, "mrhal", "validation", rate, validation, 8),
            ]
    write(run, "evaluate", "metrics", "metrics", [*run_rows(run), *rows])
    lines = headline_lines([str(run.uri)])
    table = {line.split()[0]: line.split()[1:] for line in lines[: lines.index("")]}
    column = table["recipe"].index("MRHal_hal")
    assert table["mdpo"][column] == "0.310±0.010" and table["control"][column] == "0.200±0.000"
    assert lines[-1] == "chosen on validation (lowest mean MRHal_hal): mdpo"
    text = Path(write_report([str(run.uri)], str(tmp_path / "out")).markdown).read_text()
    assert "Chosen: mdpo, the lowest mean MRHal_hal on the world's validation split" in text
    header, rows = md_table(text, "## Chosen on validation")
    assert header == ["recipe", "seeds", "MRHal_hal"]
    assert rows[1:] == [["mdpo", "3", "0.110±0.010"], ["control", "3", "0.300±0.000"]]


def run_rows(run: RunDir) -> list[dict]:
    return run.dataset("evaluate", "metrics").read_table().to_pylist()
