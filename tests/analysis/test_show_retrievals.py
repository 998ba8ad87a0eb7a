"""Retrieval examples of a smoke-sweep trial: the trial the table reports first (not the
best on test), its ranking agrees with the trial's own test metrics, the figure is one PNG,
and it is logged as an artifact of the trial's MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

from bilma.analysis.retrievals import pick_trial, retrieve


def first_trial(sweep) -> Path:
    """The grid's first variant (IRRA), its lowest seed: from the trials' launch.json."""
    (path,) = [
        p.parent
        for p in (sweep.runs / sweep.study).glob("*/result.json")
        if json.loads((p.parent / "launch.json").read_text())["variant_base"] == "IRRA"
        and json.loads(p.read_text())["seed"] == 1
    ]
    return path


def test_every_caption_reproduces_the_trials_test_metrics(smoke_sweep):
    trial = pick_trial(smoke_sweep.runs / smoke_sweep.study)
    assert trial == first_trial(smoke_sweep)  # whatever the test numbers say
    metrics = json.loads((trial / "result.json").read_text())["metrics"]
    queries = retrieve(trial, queries=10**6, split="test")  # every test caption
    assert len(queries) > 1 and all(len(q.images) == 6 for q in queries)  # 3 ids x 2 images
    r1 = 100 * sum(q.matches[0] for q in queries) / len(queries)
    r5 = 100 * sum(any(q.matches[:5]) for q in queries) / len(queries)
    assert r1 == pytest.approx(metrics["R1"], abs=1e-6)
    assert r5 == pytest.approx(metrics["R5"], abs=1e-6)
    for q in queries:
        assert sum(q.matches) == 2  # both images of the caption's person are in the gallery
        assert all(p.is_file() for p in q.images) and q.caption.strip()


def test_figure_is_written_and_logged_to_mlflow(smoke_sweep, tmp_path):
    import mlflow
    from PIL import Image

    study = smoke_sweep.runs / smoke_sweep.study
    trial = first_trial(smoke_sweep)
    proc = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "show_retrievals.py")]
        + ["--trial", str(study), "--queries", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr
    label = json.loads((trial / "launch.json").read_text())["variant"]
    assert f"{study}: showing {label} seed 1 ({trial}): the table's first variant" in proc.stdout
    figure = trial / "figures" / "retrievals_test.png"
    assert f"wrote {figure}" in proc.stdout
    with Image.open(figure) as im:
        # 3 rows of 2 inches: the caption (3 in) + 6 gallery images (1 in each), at 100 dpi;
        # the title (variant, seed, checkpoint) on two lines
        assert im.format == "PNG" and im.size == (900, 657)
    run_id = json.loads((trial / "mlflow.json").read_text())["run_id"]
    assert f"logged to MLflow run {run_id}" in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=smoke_sweep.uri)
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == [
        "figures/retrievals_test.png"
    ]

    bad = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "show_retrievals.py"), "--trial", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a trial directory, and no finished trial under it"
    ]
