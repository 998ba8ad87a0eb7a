"""Fixtures and helpers of the trial-directory and MLflow tests (a real SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bilma.config import Config, load_config
from bilma.runs.trial_dir import TrialDir, make_result


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing may land in the repository (./mlruns, ./mlflow.db), and no outside server
    # may take over the default URI.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating one costs 1-2 s); tests use their own study."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def make_cfg(tmp_path: Path, uri: str = "", study: str = "s", **overrides) -> Config:
    values = {
        "paths.runs": str(tmp_path / "runs"),
        "tracking.study": study,
        "tracking.variant": "+SemMIM",
        "train.seed": 3,
        **({"tracking.uri": uri} if uri else {}),
        **overrides,
    }
    return load_config(None, values)


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, study: str) -> list:
    exp = client(uri).get_experiment_by_name(study)
    return [] if exp is None else client(uri).search_runs([exp.experiment_id])


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def write_records(trial: TrialDir, epochs: range) -> list[dict]:
    """Train and val records as the trainer writes them, at fixed times."""
    recs = []
    for e in epochs:
        t = 1_700_000_000.0 + 60 * e
        recs.append({"epoch": e, "step": 10 * e, "split": "train", "time": t, "loss": 3.0 / e})
        recs.append(
            {"epoch": e, "step": 10 * e, "split": "val", "time": t + 1, "R1": 10.0 * e, "mAP": e}
        )
    for r in recs:
        trial.append_metrics(r)
    return recs


def finish_trial(trial: TrialDir, cfg: Config, epochs: int) -> dict:
    metrics = {"R1": 55.5, "R5": 75.0, "R10": 82.25, "mAP": 50.0, "mINP": 33.0}
    sel = {"split": "val", "metric": "R1", "epoch": epochs, "value": 10.0 * epochs}
    result = make_result(
        cfg, metrics, sel, {"R1": 10.0 * epochs}, epochs, 12.5, launch=trial.read_launch()
    )
    trial.write_result(result)
    trial.set_status("done")
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """cluster/mlflow-server.sh on 127.0.0.1:`port`, its store in `folder`: start() waits
    until it answers, stop() ends it (the store stays for the next start())."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = folder, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 180) -> MlflowServer:
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        from support.paths import REPO

        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        self.proc = subprocess.Popen(
            ["bash", str(REPO / "cluster" / "mlflow-server.sh"), "--store", str(self.folder)]
            + ["--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.read() == b"OK":
                        return self
            except OSError:
                assert self.proc.poll() is None, "the MLflow server exited"
                assert time.time() < deadline, f"server not healthy in {timeout} s"
                time.sleep(0.3)

    def stop(self) -> None:
        import os
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None
