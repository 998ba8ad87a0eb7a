"""cluster/mlflow-server.sh: a real MLflow server with its store in the given folder, bound to
127.0.0.1 by default, printing the URI the jobs use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support.paths import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_stores_runs_on_the_given_disk(tmp_path):
    import mlflow

    port = free_port()
    store = tmp_path / "shared" / "mlflow"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.Popen(
        ["bash", str(REPO / "cluster" / "mlflow-server.sh"), "--store", str(store)]
        + ["--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.read() == b"OK":
                        break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "server not healthy in 180 s"
                time.sleep(0.5)
        assert (store / "tracking_uri").read_text().strip() == uri
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.create_experiment("cluster-test")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "R1", 12.5)
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics == {"R1": 12.5}
        assert (store / "mlflow.db").stat().st_size > 0
        # bound to loopback only: no listening socket on another address
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        ours = [line for line in listening.splitlines() if f":{port} " in line]
        assert ours and all("127.0.0.1:" in line for line in ours), ours
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in out


def test_unknown_argument_is_refused(tmp_path):
    out = subprocess.run(
        ["bash", str(REPO / "cluster" / "mlflow-server.sh"), "--hots", "0.0.0.0"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "unknown argument '--hots'" in out.stderr
