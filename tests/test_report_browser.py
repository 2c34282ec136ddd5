"""report.html as a person sees it: rendered by headless Chromium at 1280 px, the headline table
fits the window without scrolling sideways and every image on the page loads.

Needs Debian's `chromium` (`.ci/run` installs it; `apt-get install chromium` elsewhere)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from amp_ray.report.document import write_report
from amp_ray.storage import RunDir
from amp_ray.storage.schemas import SCHEMAS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# skipped on a developer's machine without it, never in CI (.ci/run installs it)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="needs Debian's chromium"
)
SPLITS = ("eval_iid", "eval_bias_probe", "eval_control")
WIDTH = 1280

# Runs after the page and its images have loaded; writes what it measured into the DOM, which
# --dump-dom prints (as the title, so that it takes no room on the page). The headline is the
# first table after the "Headline" heading.
PROBE = """<script>
window.addEventListener("load", () => {
  const heading = [...document.querySelectorAll("h2")].find(h => h.textContent === "Headline");
  let node = heading.nextElementSibling;
  while (node && !node.querySelector("table")) node = node.nextElementSibling;
  const table = node.querySelector("table").getBoundingClientRect();
  document.title = JSON.stringify({
    viewport: window.innerWidth,
    page: document.documentElement.scrollWidth,
    page_width: document.documentElement.clientWidth,
    table_left: table.left, table_right: table.right,
    wrapper_scroll: node.scrollWidth, wrapper_width: node.clientWidth,
    images: [...document.images].map(i => [i.getAttribute("src"), i.complete && i.naturalWidth]),
  });
});
</script></body>"""


def row(model: str, benchmark: str, split: str, name: str, value: float) -> dict:
    return dict(model=model, benchmark=benchmark, split=split, metric=name, value=value, count=50)


def model_metrics(model: str, shift: float) -> list[dict]:
    """Every headline metric of the demo's report, shifted per model so the cells differ."""
    rows = [
        row(model, "bias", "eval_bias_probe", "partner_rate", 0.6 - shift),
        row(model, "chair", "eval_iid", "chair_i", 0.5 - shift / 2),
        row(model, "chair", "eval_iid", "chair_s", 0.7 - shift / 2),
        row(model, "chair", "eval_iid", "recall", 0.45 + shift / 3),
        row(model, "pope", "eval_iid", "f1", 0.55 + shift / 4),
    ]
    for split in SPLITS:
        rows += [
            row(model, "mrhal", split, "score_cumulative", 3.0 + shift),
            row(model, "mrhal", split, "hallucination_rate_cumulative", 0.5 - shift / 3),
            row(model, "mmhal", split, "score", 3.5 + shift),
            row(model, "mmhal", split, "hallucination_rate", 0.4 - shift / 5),
        ]
    return rows


def write(run: RunDir, name: str, schema: str, rows: list[dict]) -> None:
    writer = run.writer("train" if name != "metrics" else "evaluate", name, schema)
    writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[schema]))
    writer.commit()


def demo_like_run(path: Path) -> RunDir:
    """The demo's models: the base policy and three recipes at three seeds, with training logs."""
    run = RunDir.open(str(path))
    models = [
        (f"{arm}-seed{seed}" if (arm, seed) != ("mdpo", 0) else "mdpo", arm, seed)
        for arm in ("sft_control", "dpo", "mdpo")
        for seed in range(3)
    ]
    metrics = model_metrics("expert_m", 0.0)
    for index, (model, _, seed) in enumerate(models):
        metrics += model_metrics(model, 0.1 + 0.02 * index + 0.003 * seed)
    write(run, "metrics", "metrics", metrics)
    log = [
        dict(model=model, step=step, metric=name, value=1.0 / step + offset)
        for model, _, _ in models
        for step in range(25, 301, 25)
        for name, offset in (("loss", 0.0), ("accuracy/0-1", 0.5))
    ]
    write(run, "log", "training_log", log)
    runs = [
        dict(model=m, arm=arm, seed=seed, steps=300, budget="steps", step_seconds=0.3)
        for m, arm, seed in models
    ]
    write(run, "runs", "training_runs", [{**r, "final_loss": 0.4} for r in runs])
    return run


def render(page: Path) -> dict:
    """The probe's measurements of `page` in Chromium with a 1280 px wide window."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", PROBE))
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        f"--window-size={WIDTH},900",
        "--virtual-time-budget=10000",  # lets the load event fire before the DOM is dumped
        f"--screenshot={page.with_name('screenshot.png')}",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    found = re.search(r"<title>(\{.*?\})</title>", done.stdout, re.S)
    assert found, f"the probe did not run; chromium said: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_the_headline_fits_1280_px_and_every_image_loads(tmp_path: Path) -> None:
    run = demo_like_run(tmp_path / "run")
    paths = write_report([str(run.uri)], str(tmp_path / "report"))
    probe = render(Path(paths.html))
    assert probe["viewport"] == WIDTH
    # the headline table is wholly inside the window and its wrapper does not scroll
    assert probe["table_left"] >= 0 and probe["table_right"] <= WIDTH, probe
    assert probe["wrapper_scroll"] <= probe["wrapper_width"], probe
    assert probe["page"] <= probe["page_width"], probe  # nor does the page
    images = dict(probe["images"])
    assert set(images) == {Path(uri).name for uri in paths.images.values()}, images
    assert all(width and width > 0 for width in images.values()), images
