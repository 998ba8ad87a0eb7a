"""Ray Tune backend overhead per trial, against the local backend, on the same trivial trials.

N trivial trials (tiny model, one training step, evaluation, MLflow tracking) of one grid,
launched twice with the same parallelism:
  local: `python sweeps/launch.py --grid ... --backend local --max-parallel P`
  ray:   `python sweeps/launch.py --grid ... --backend ray` on a local Ray of P CPUs that the
         launcher starts and stops itself (one CPU per trial, so P trials at once).
Overhead per trial = (ray wall - local wall) / N; Ray's start and stop alone are measured too
(`ray.init(num_cpus=P)` + `ray.shutdown()` in a fresh process), so the rest is per trial.

    .venv/bin/python benchmarks/bench_ray.py [--trials 6] [--parallel 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_launch import trial_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RAY_START = """
import shutil, tempfile, time, ray
tmp = tempfile.mkdtemp(prefix="bilma-ray-")
t0 = time.perf_counter()
ray.init(num_cpus={p}, include_dashboard=False, _node_ip_address="127.0.0.1",
         _temp_dir=tmp, log_to_driver=False)
ray.shutdown()
print(time.perf_counter() - t0)
shutil.rmtree(tmp, ignore_errors=True)
"""


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--parallel", type=int, default=2)
    args = ap.parse_args()
    n, p = args.trials, args.parallel
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = REPO / "configs" / "synth_tiny.yaml"
        # data and the MLflow store made once, outside the timings
        warm = trial_overrides(tmp / "synth", tmp / "warm", tmp / "warm.db")
        cmd = [sys.executable, "-m", "bilma", "train", "--config", str(base)]
        subprocess.run(
            cmd + [f"{k}={v}" for k, v in warm.items()], check=True, env=env, capture_output=True
        )
        walls = {}
        for backend in ("local", "ray"):
            o = trial_overrides(tmp / "synth", tmp / f"runs_{backend}", tmp / f"{backend}.db")
            grid = {"study": "bench", "base": str(base), "seeds": list(range(1, n + 1)), "set": o}
            path = tmp / f"{backend}.yaml"
            path.write_text(yaml.safe_dump(grid))
            launch = [sys.executable, str(REPO / "sweeps" / "launch.py"), "--grid", str(path)]
            launch += ["--backend", backend]
            launch += ["--max-parallel", str(p)] if backend == "local" else []
            walls[backend] = timed(launch, {**env, "BILMA_RAY_NUM_CPUS": str(p)}, tmp)
        start = subprocess.run(
            [sys.executable, "-c", RAY_START.format(p=p)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        ray_start = float(start.stdout.strip().splitlines()[-1])

    local, ray = walls["local"], walls["ray"]
    print(f"# Ray overhead, {datetime.date.today()}, {platform.platform()}, nproc={os.cpu_count()}")
    print(
        "| trials | parallel | local backend s | ray backend s | Ray start+stop s "
        "| overhead per trial s | per trial without start s |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {n} | {p} | {local:.1f} | {ray:.1f} | {ray_start:.1f} | {(ray - local) / n:.2f} "
        f"| {(ray - local - ray_start) / n:.2f} |"
    )


if __name__ == "__main__":
    main()
