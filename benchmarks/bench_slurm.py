"""SLURM backend timings on the local cluster (`cluster/dev-slurm.sh start` first).

    python benchmarks/bench_slurm.py [--trials 100] [--skip-requeue]

1. Submission: seconds from starting `sweeps/launch.py --backend slurm` to every trial of a
   `--trials`-trial grid queued (the jobs are held with `--hold`, counted, then cancelled).
   Goal: under 10 s for 100 trials.
2. Requeue: one trial is signalled the way SLURM does at its time limit (USR2 to the job's
   steps); the wall time from the signal to the job queued again, running again, and its first
   training step after resuming.
Results go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LAST_CPU = 0.0
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support.tiny import SYNTH_OVERRIDES, tiny_overrides  # noqa: E402

from bilma.config import load_config, parse_override  # noqa: E402


def grid_file(tmp: Path, root: Path, seeds: int, tracking: bool, *extra: str) -> Path:
    overrides = tiny_overrides(root, tmp / "runs", *extra)
    if tracking:
        overrides += ["tracking.enabled=true", f"tracking.uri=sqlite:///{tmp}/mlflow.db"]
    grid = {
        "study": "bench",
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": list(range(seeds)),
        "set": dict(parse_override(o) for o in overrides),
    }
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def profile_file(tmp: Path, **keys) -> Path:
    prof = yaml.safe_load((REPO / "cluster" / "profiles" / "local-slurm.yaml").read_text())
    prof.update(keys)
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def launch(grid: Path, profile: Path, cwd: Path) -> tuple[float, list[str], str]:
    global LAST_CPU
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "launch.py"), "--grid", str(grid)]
        + ["--backend", "slurm", "--profile", str(profile)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    LAST_CPU = _children_cpu() - cpu0  # the launcher's own CPU time (sbatch included)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(out)
    arrays = sorted(set(re.findall(r"^\s+(\d+)(?:_\d+)?\s", out, re.MULTILINE)))
    return seconds, arrays, out


def queued(ids: list[str]) -> int:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True
    )
    return len(out.stdout.split())


def bench_submit(root: Path, trials: int, tracking: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        grid = grid_file(tmp, root, trials, tracking)
        prof = profile_file(tmp, sbatch_extra=["--hold"])
        seconds, arrays, out = launch(grid, prof, tmp)
        n = queued(arrays)
        subprocess.run(["scancel", *arrays], check=True)
        print(
            f"submit {trials} trials (MLflow {'on' if tracking else 'off'}): {seconds:.1f} s "
            f"to {n} jobs queued in {len(arrays)} array(s); launcher CPU {LAST_CPU:.1f} s"
        )


def wait(what: str, check, timeout: float = 600, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def bench_requeue(root: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        grid = grid_file(
            tmp,
            root,
            1,
            False,
            "train.epochs=20",
            "train.log_every=1",
        )
        _, (array,), _ = launch(grid, profile_file(tmp), tmp)
        job = array  # one trial: a plain job, not an array
        log = tmp / "runs" / "bench" / "slurm" / job / f"{job}_0_log.err"

        def text() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        wait("training steps", lambda: re.search(r"epoch 2/20 \S+ 2/\d+ loss", text()))
        t0 = time.perf_counter()
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        marks = {}
        wait("requeue", lambda: "Requeued job" in text())
        marks["saved and requeued"] = time.perf_counter() - t0
        wait("restart", lambda: "attempt 2" in text())
        marks["running again (trainer started)"] = time.perf_counter() - t0

        def resumed_step() -> bool:
            after = text().split("resuming from", 1)
            return len(after) == 2 and re.search(r"\] \d+/\d+ loss", after[1]) is not None

        wait("first step after resuming", resumed_step)
        marks["first training step after resuming"] = time.perf_counter() - t0
        subprocess.run(["scancel", array], check=True)
        for k, v in marks.items():
            print(f"requeue: signal -> {k}: {v:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--skip-requeue", action="store_true")
    p.add_argument("--skip-submit", action="store_true")
    args = p.parse_args()
    from bilma.data import datasets

    root = Path(tempfile.mkdtemp(prefix="bench-slurm-data-"))
    datasets.ensure_synthetic(load_config(None, [f"data.root={root}", *SYNTH_OVERRIDES]).data)
    if not args.skip_submit:
        bench_submit(root, args.trials, tracking=False)
        bench_submit(root, args.trials, tracking=True)
    if not args.skip_requeue:
        bench_requeue(root)


if __name__ == "__main__":
    main()
