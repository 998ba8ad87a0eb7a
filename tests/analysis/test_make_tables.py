"""make_tables.py over a real smoke sweep: the numbers against the runs' own result.json files,
computed here independently (statistics, scipy), from MLflow and from the trial directories;
the LaTeX structure; the plots; trials not averaged in; bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.analysis import columns, tabulars
from support.paths import REPO

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def make_tables(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "analysis" / "make_tables.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=dict(os.environ, MLFLOW_TRACKING_URI=""),
    )


def expected(sweep) -> dict[tuple[str, float], dict[int, dict[str, float]]]:
    """(variant, id_weight) -> seed -> test metrics, straight from the trial directories."""
    out: dict = {}
    for path in sorted((sweep.runs / sweep.study).glob("*/result.json")):
        result = json.loads(path.read_text())
        cfg = yaml.safe_load((path.parent / "config.yaml").read_text())
        launch = json.loads((path.parent / "launch.json").read_text())
        key = (launch["variant_base"], cfg["loss"]["id_weight"])
        out.setdefault(key, {})[result["seed"]] = result["metrics"]
    return out


def read_csv(path: Path) -> dict[tuple[str, float, str], dict[str, str]]:
    rows = {}
    for r in csv.DictReader(io.StringIO(path.read_text())):
        point = json.loads(r["grid_point"])
        rows[(r["variant_base"], point.get("loss.id_weight"), r["metric"])] = r
    return rows


@pytest.fixture(scope="module")
def tables(smoke_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    proc = make_tables(
        "--tracking-uri", smoke_sweep.uri, "--study", smoke_sweep.study,
        "--format", "all", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_numbers_match_the_runs(smoke_sweep, tables):
    stats = pytest.importorskip("scipy.stats")
    proc, out = tables
    want = expected(smoke_sweep)
    assert sorted(want) == [("BiLMa", 0.5), ("BiLMa", 1.0), ("IRRA", 1.0)]
    got = read_csv(out / f"{smoke_sweep.study}.csv")
    md = proc.stdout
    for (variant, w), by_seed in want.items():
        assert sorted(by_seed) == [1, 2, 3]
        for m in METRICS:
            xs = [by_seed[s][m] for s in (1, 2, 3)]
            row = got[(variant, w, m)]
            assert float(row["mean"]) == pytest.approx(statistics.mean(xs), abs=1e-9)
            assert float(row["std"]) == pytest.approx(statistics.stdev(xs), abs=1e-9)
            assert int(row["n"]) == 3
            assert f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" in md
    # Δ and p: BiLMa against the baseline IRRA at the same grid point (id_weight 1.0).
    base, bilma = want[("IRRA", 1.0)], want[("BiLMa", 1.0)]
    for m in METRICS:
        a, b = [base[s][m] for s in (1, 2, 3)], [bilma[s][m] for s in (1, 2, 3)]
        row = got[("BiLMa", 1.0, m)]
        assert float(row["delta"]) == pytest.approx(statistics.mean(b) - statistics.mean(a))
        assert row["pairs"] == "3"
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        if statistics.stdev(diffs) > 0:
            p = stats.ttest_rel(b, a).pvalue
            assert float(row["p"]) == pytest.approx(p, rel=1e-6)
            shown = "<0.001" if p < 0.001 else f"={p:.3f}"
            assert f"{statistics.mean(b) - statistics.mean(a):+.2f} (p{shown})" in md
        assert got[("IRRA", 1.0, m)]["baseline"] == "yes"
        assert got[("BiLMa", 0.5, m)]["delta"] == ""  # no IRRA at id_weight 0.5: no Δ
    # Variants in the grid's order, the swept axis as a column.
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| variant | id_weight | n | R1 | ΔR1 |")
    assert [ln.split(" | ")[:2] for ln in lines[1:]] == [
        ["| IRRA", "1.0"],
        ["| BiLMa", "1.0"],
        ["| BiLMa", "0.5"],
    ]


def test_table_states_selection_runs_and_left_out_trials(tables):
    md = tables[0].stdout
    assert "Checkpoint selection: R1 on the val split (synthetic)." in md
    assert "Aggregates 9 finished runs" in md
    # the study's totals, from the runs' gpu_hours and cpu_hours metrics (CPU trials)
    assert re.search(r"^used: 0 GPU-hours, [\d.,]+ CPU-hours \(9 trials\)$", md, re.M)
    # the chance level, read back from MLflow (test/chance_R1): the 3 test identities
    assert "Chance R1: 33.33" in md
    assert "Not averaged in (1):" in md
    assert re.search(r"- broken \[id_weight=1.0\] seed=1, \S+ \(\w+\): failed", md)
    assert "Warning" not in md and "warning" not in tables[0].stderr  # n = 3 everywhere


def test_same_table_from_trial_directories(smoke_sweep, tables, tmp_path):
    _, out = tables
    proc = make_tables("--runs", str(smoke_sweep.runs), "--format", "csv", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    from_mlflow = read_csv(out / f"{smoke_sweep.study}.csv")
    from_dirs = read_csv(tmp_path / f"{smoke_sweep.study}.csv")
    assert from_dirs.keys() == from_mlflow.keys()
    for key, row in from_mlflow.items():
        for field in ("mean", "std", "n", "delta", "p"):
            assert from_dirs[key][field] == row[field], (key, field)
    assert proc.stdout.count("|") == tables[0].stdout.count("|")
    used = [ln for ln in proc.stdout.splitlines() if ln.startswith("used: ")]
    assert used == [ln for ln in tables[0].stdout.splitlines() if ln.startswith("used: ")]


def test_latex_is_well_formed(smoke_sweep, tables):
    tex = (tables[1] / f"{smoke_sweep.study}.tex").read_text()
    parts = tabulars(tex)  # the environments nest
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.endswith("\\\\")]
    assert len(rows) == 3  # one row per variant and grid point
    cols = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
    header = tex.split("\\toprule\n", 1)[1].splitlines()[0]
    for line in [header, *rows]:
        assert line.count(" & ") == len(cols) - 1
    assert tex.count("{") - tex.count("\\{") == tex.count("}") - tex.count("\\}")
    assert "$\\pm$" in tex and "id\\_weight" in tex
    # Split to fit a column; bold exactly where the paired test over the 3 seeds clears 0.05.
    assert len(parts) > 1 and all(columns(p) <= 7 for p in parts)
    tested = read_csv(tables[1] / f"{smoke_sweep.study}.csv").values()
    assert tex.count("\\textbf{") == sum(bool(r["p"]) and float(r["p"]) < 0.05 for r in tested)
    assert "\\caption{" in tex and "val split" in tex


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_of_the_expected_size(smoke_sweep, tables):
    from PIL import Image

    from bilma.analysis.plots import PIXELS

    proc, out = tables
    axis = out / f"{smoke_sweep.study}_R1_vs_id_weight.png"
    epochs = out / f"{smoke_sweep.study}_val_R1_per_epoch.png"
    for path in (axis, epochs):
        assert f"wrote {path}" in proc.stdout
        assert png_size(path) == PIXELS == (800, 500)
        with Image.open(path) as im:
            im.verify()


def test_early_stopped_and_unfinished_trials_are_listed_not_averaged(smoke_sweep, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(smoke_sweep.runs, runs)
    done = sorted((runs / smoke_sweep.study).glob("*/result.json"))[0].parent
    stopped = done.with_name("stopped0001")
    shutil.copytree(done, stopped)
    (stopped / "result.json").unlink()
    (stopped / "status.json").write_text(json.dumps({"state": "stopped", "attempts": 1}))
    proc = make_tables("--runs", str(runs), "--study", smoke_sweep.study)
    assert proc.returncode == 0, proc.stderr
    assert "Aggregates 9 finished runs" in proc.stdout and "Not averaged in (2):" in proc.stdout
    assert "(stopped0001): early-stopped" in proc.stdout

    # The same in MLflow: a run tagged stopped_early=true (what ASHA's stop leaves).
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(smoke_sweep.uri[len("sqlite:///") :], db)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(smoke_sweep.study)
    tags = {"kind": "trial", "trial_id": "stopped0002", "variant": "IRRA", "seed": "4"}
    run = client.create_run(exp.experiment_id, tags={**tags, "stopped_early": "true"})
    client.set_terminated(run.info.run_id, "KILLED")
    proc = make_tables("--tracking-uri", f"sqlite:///{db}", "--study", smoke_sweep.study)
    assert proc.returncode == 0, proc.stderr
    assert "IRRA seed=4" in proc.stdout and "(stopped0002): early-stopped" in proc.stdout
    assert "Aggregates 9 finished runs" in proc.stdout


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_bad_input_one_line_and_nonzero(smoke_sweep, tmp_path):
    line = one_error_line(make_tables("--tracking-uri", smoke_sweep.uri, "--study", "nope"))
    assert "unknown study 'nope'" in line and smoke_sweep.study in line

    missing = tmp_path / "none.db"
    line = one_error_line(make_tables("--tracking-uri", f"sqlite:///{missing}"))
    assert f"no MLflow store at {missing}" in line and not missing.exists()

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_error_line(make_tables("--tracking-uri", f"http://127.0.0.1:{port}"))
    assert f"cannot read the MLflow store at http://127.0.0.1:{port}" in line

    line = one_error_line(make_tables("--runs", str(tmp_path / "nowhere")))
    assert "nowhere: no such folder of trial directories" in line

    # A study whose only trial failed: no finished run.
    failed = next(
        p
        for p in (smoke_sweep.runs / smoke_sweep.study).iterdir()
        if not (p / "result.json").exists()
    )
    shutil.copytree(failed, tmp_path / "runs" / smoke_sweep.study / failed.name)
    line = one_error_line(make_tables("--runs", str(tmp_path / "runs")))
    assert f"study '{smoke_sweep.study}' has no finished run (1 failed)" in line

    line = one_error_line(make_tables("--format", "tex"))
    assert "--format tex writes files: add --out DIR" in line


def test_default_store_is_the_working_directory(smoke_sweep, tmp_path):
    """No --tracking-uri: sqlite:///mlflow.db in the working directory, every study."""
    shutil.copy(smoke_sweep.uri[len("sqlite:///") :], tmp_path / "mlflow.db")
    proc = make_tables(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"### {smoke_sweep.study}: ablation on synthetic" in proc.stdout
