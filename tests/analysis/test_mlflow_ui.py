"""The MLflow UI over the smoke sweep's store, in a real headless Chromium.

`mlflow ui` bound to 127.0.0.1; the experiment's runs page lists the sweep's parent run and,
expanded, its child runs named "<variant> seed=<seed>"; sorted by test/R1 through the URL the
finished trials come in descending order; a trial's page shows the swept axis as a param.
Screenshots go to artifacts/ (kept by CI). Debian's chromium is installed when missing and
$CI is set (apt-get, about 20 s); elsewhere the test is skipped with the command to run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from support.cdp_client import Browser
from support.paths import REPO

ARTIFACTS = REPO / "artifacts"
EXPANDER = "button[data-component-id*='runnamecellrenderer']"

pytestmark = pytest.mark.browser


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not os.environ.get("CI"):
        pytest.skip("chromium is not installed: apt-get update && apt-get install -y chromium")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(
            cmd,
            check=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            capture_output=True,
            timeout=600,
        )
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(smoke_sweep, tmp_path):
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(exe), "ui", "--backend-store-uri", smoke_sweep.uri]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow ui did not answer /health in 180 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def shown_r1(b: Browser, r1: dict[str, float | None]) -> list[float]:
    """test/R1 of the runs in the order the table shows them (runs without one left out)."""
    links = "Array.from(document.querySelectorAll('a[href*=\"/runs/\"]')).map(a => a.href)"
    ids = [h.rsplit("/", 1)[-1] for h in b.evaluate(links) or []]
    return [r1[i] for i in dict.fromkeys(ids) if r1.get(i) is not None]


def _runs(smoke_sweep):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=smoke_sweep.uri)
    exp = client.get_experiment_by_name(smoke_sweep.study)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    return exp.experiment_id, parent, children


def test_runs_page_lists_parent_and_children(smoke_sweep, mlflow_ui, tmp_path):
    exe = chromium()
    exp_id, parent, children = _runs(smoke_sweep)
    assert len(children) == 10
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    names = sorted(c.info.run_name for c in children)
    assert "IRRA [id_weight=1.0] seed=1" in names and "broken [id_weight=1.0] seed=1" in names

    with Browser(exe, tmp_path / "profile") as b:
        b.navigate(f"{mlflow_ui}/#/experiments/{exp_id}/runs")
        assert b.wait_for(f'!!document.querySelector("{EXPANDER}")', 120), "no runs table"
        text = b.evaluate("document.body.innerText")
        assert parent.info.run_name in text.splitlines()  # the parent, children folded
        assert not any(n in text for n in names)
        b.evaluate(f'document.querySelector("{EXPANDER}").click()')
        shown = " && ".join(f"document.body.innerText.includes({n!r})" for n in names)
        assert b.wait_for(shown, 60), b.evaluate("document.body.innerText")[:3000]
        shot = b.screenshot(ARTIFACTS / "mlflow_ui_runs.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Final test metrics are sortable: ?orderByKey=metrics.`test/R1`, descending.
        order = quote("metrics.`test/R1`")
        b.navigate("about:blank")  # a fresh load, not a hash change inside the open page
        b.navigate(f"{mlflow_ui}/#/experiments/{exp_id}/runs?orderByKey={order}&orderByAsc=false")
        assert b.wait_for("document.body.innerText.includes('Sort: test/R1')", 120)
        r1 = {c.info.run_id: c.data.metrics.get("test/R1") for c in children}
        deadline = time.time() + 60
        while True:  # the table re-renders after the sorted search returns
            values = shown_r1(b, r1)
            if (len(values) == 9 and values == sorted(values, reverse=True)) or (
                time.time() > deadline
            ):
                break
            time.sleep(0.5)
        assert len(values) == 9 and values == sorted(values, reverse=True), values
        b.screenshot(ARTIFACTS / "mlflow_ui_runs_by_test_R1.png")

        # The swept axis is a param of every trial run.
        child = next(c for c in children if c.data.params.get("loss.id_weight") == "0.5")
        b.navigate(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{child.info.run_id}")
        assert b.wait_for("document.body.innerText.includes('loss.id_weight')", 120)
        text = b.evaluate("document.body.innerText")
        after = text[text.index("loss.id_weight") :].split("\n")
        assert after[1].strip() == "0.5"
        b.screenshot(ARTIFACTS / "mlflow_ui_trial_params.png")
