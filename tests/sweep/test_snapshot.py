"""Frozen code per launch (`bilma.sweep.snapshot`): what a snapshot holds, its content hash
and reuse, the installed-package mode, how each backend's jobs are pointed at it, and, end to
end, that trials launched before the checkout was broken still run the code they were
launched with (local backend here; the real SLURM in `test_held_slurm_jobs_run_...`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
import yaml
from support.executors import RecordingExecutor
from support.paths import REPO
from support.tiny import tiny_overrides

from bilma.config import parse_override
from bilma.runs.launch import Launch, read_launch, write_launch
from bilma.runs.provenance import code_info
from bilma.runs.schema import CODE_MANIFEST
from bilma.runs.trial_dir import TrialDir
from bilma.sweep import snapshot
from bilma.sweep.plan import Action, Planned


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def _package(root: Path, name: str = "pkg") -> Path:
    """A small package: two modules, a data file, a cache that must not be copied."""
    pkg = root / name
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "vocab.json").write_text('{"a": 1}\n')
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0" * 10)
    return pkg


def _checkout(root: Path) -> Path:
    """`_package` in a git repository, committed, with a linked resources folder."""
    pkg = _package(root)
    (root / "configs").mkdir()
    (root / "configs" / "a.yaml").write_text("k: 1\n")
    (pkg / "resources").mkdir()
    (pkg / "resources" / "configs").symlink_to("../../configs")
    (root / ".gitignore").write_text("__pycache__/\nignored_*.py\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "first")
    return pkg


# ----------------------------------------------------------------------------- units


def test_installed_package_copies_its_files_and_no_caches(tmp_path):
    pkg = _package(tmp_path / "site-packages")
    files, git = snapshot.package_files(pkg)
    assert sorted(files) == ["pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/vocab.json"]
    assert git == {"source": "installed", "commit": None, "untracked": []}
    snap = snapshot.make_snapshot(tmp_path / "runs" / "study", pkg)
    assert snap.path == tmp_path / "runs" / "study" / ".code" / snap.id
    assert (snap.path / "pkg" / "sub" / "vocab.json").read_text() == '{"a": 1}\n'
    assert not (snap.path / "pkg" / "__pycache__").exists()
    m = snap.manifest
    assert (m["source"], m["commit"], m["dirty"], m["files"]) == ("installed", None, None, 3)
    assert m["bytes"] == len("X = 1\n") + len('{"a": 1}\n')
    assert json.loads((snap.path / CODE_MANIFEST).read_text())["id"] == snap.id


def test_the_id_hashes_paths_and_bytes(tmp_path):
    pkg = _package(tmp_path / "a")
    first = snapshot.content_id(snapshot.package_files(pkg)[0])
    # The same bytes elsewhere: the same id (two checkouts of one commit share a snapshot).
    same = snapshot.content_id(snapshot.package_files(_package(tmp_path / "b"))[0])
    assert same == first and len(first) == snapshot.ID_LENGTH
    (pkg / "__init__.py").write_text("X = 2\n")
    edited = snapshot.content_id(snapshot.package_files(pkg)[0])
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "vocab.json").rename(pkg / "sub" / "vocab2.json")
    renamed = snapshot.content_id(snapshot.package_files(pkg)[0])
    assert len({first, edited, renamed}) == 3
    # A new cache file changes nothing.
    (pkg / "sub" / "__pycache__").mkdir()
    (pkg / "sub" / "__pycache__" / "y.pyc").write_bytes(b"1")
    (pkg / "sub" / "vocab2.json").rename(pkg / "sub" / "vocab.json")
    assert snapshot.content_id(snapshot.package_files(pkg)[0]) == first


def test_same_code_reuses_a_snapshot_and_an_edit_makes_another(tmp_path):
    pkg = _package(tmp_path / "site")
    study = tmp_path / "runs" / "s"
    one = snapshot.make_snapshot(study, pkg)
    again = snapshot.make_snapshot(study, pkg)
    assert (again.id, again.path, again.reused, one.reused) == (one.id, one.path, True, False)
    assert again.manifest["created"] == one.manifest["created"]
    (pkg / "__init__.py").write_text("X = 2\n")
    two = snapshot.make_snapshot(study, pkg)
    assert two.id != one.id and not two.reused
    assert sorted(p.name for p in (study / ".code").iterdir()) == sorted([one.id, two.id])
    # the first is left as it was: its queued jobs still import X = 1
    assert (one.path / "pkg" / "__init__.py").read_text() == "X = 1\n"


def test_checkout_takes_tracked_and_new_py_files_with_the_diff(tmp_path):
    pkg = _checkout(tmp_path)
    head = _git(tmp_path, "rev-parse", "HEAD").strip()
    clean = snapshot.make_snapshot(tmp_path / "runs" / "s", pkg)
    assert clean.manifest["commit"] == head and clean.manifest["dirty"] is False
    assert clean.manifest["diff"] == "" and clean.manifest["diff_sha256"] is None
    # the link is followed: resources/configs holds the checkout's configs/
    assert (clean.path / "pkg" / "resources" / "configs" / "a.yaml").read_text() == "k: 1\n"

    (pkg / "__init__.py").write_text("X = 3\n")  # an edit not committed
    (pkg / "new_module.py").write_text("Y = 1\n")  # a module not added yet
    (pkg / "notes.txt").write_text("scratch\n")  # untracked, not .py: left out
    (pkg / "ignored_local.py").write_text("Z = 1\n")  # ignored: left out
    (tmp_path / "configs" / "a.yaml").write_text("k: 2\n")  # a linked resource edited
    files, git = snapshot.package_files(pkg)
    assert "pkg/new_module.py" in files and "pkg/notes.txt" not in files
    assert "pkg/ignored_local.py" not in files and "pkg/__pycache__/x.cpython-311.pyc" not in files
    assert git["untracked"] == ["pkg/new_module.py"]
    dirty = snapshot.make_snapshot(tmp_path / "runs" / "s", pkg)
    m = dirty.manifest
    assert dirty.id != clean.id and m["commit"] == head and m["dirty"] is True
    assert "-X = 1\n+X = 3" in m["diff"] and "-k: 1\n+k: 2" in m["diff"]
    assert len(m["diff_sha256"]) == 64 and m["untracked"] == ["pkg/new_module.py"]
    assert (dirty.path / "pkg" / "__init__.py").read_text() == "X = 3\n"


def test_provenance_reads_the_manifest_beside_the_package(tmp_path):
    pkg = _checkout(tmp_path)
    (pkg / "__init__.py").write_text("X = 3\n")
    snap = snapshot.make_snapshot(tmp_path / "runs" / "s", pkg)
    info = code_info(snap.path / "pkg")
    assert info == {
        "code_snapshot": snap.id,
        "code_path": str(snap.path / "pkg"),
        "git_commit": _git(tmp_path, "rev-parse", "HEAD").strip(),
        "git_dirty": True,
        "git_diff_sha256": snap.manifest["diff_sha256"],
    }
    assert code_info(pkg) == {}  # the checkout itself is no snapshot


def _trial(tmp_path: Path, name: str, code: str | None, action=Action.SUBMIT) -> Planned:
    d = TrialDir(tmp_path / "runs" / "s" / name)
    d.path.mkdir(parents=True)
    write_launch(d.path, Launch(study="s", variant="v", seed=0, code=code))
    return Planned(SimpleNamespace(study="s", variant="v", seed=0), d, action)  # type: ignore[arg-type]


def test_job_env_and_setup_lines_put_the_trials_snapshot_first(tmp_path, monkeypatch):
    snap = snapshot.make_snapshot(tmp_path / "runs" / "s", _package(tmp_path / "site"))
    p = _trial(tmp_path, "t1", snap.id)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert snapshot.job_env(p.dir.path) == {
        "PYTHONPATH": f"{snap.path}{os.pathsep}/elsewhere",
        "PYTHONSAFEPATH": "1",
    }
    assert snapshot.setup_lines(p.dir.path) == [
        f'export PYTHONPATH={snap.path}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        "export PYTHONSAFEPATH=1",
    ]
    none = _trial(tmp_path, "t2", None)  # --no-snapshot: the job imports what is on disk
    assert snapshot.job_env(none.dir.path) == {} and snapshot.setup_lines(none.dir.path) == []
    gone = _trial(tmp_path, "t3", "0123456789ab")  # a snapshot deleted by hand: none
    assert snapshot.job_env(gone.dir.path) == {}


def test_local_backend_submits_each_job_with_its_snapshot(tmp_path, monkeypatch):
    from bilma.sweep.backends import local

    monkeypatch.setattr(submitit, "LocalExecutor", RecordingExecutor)
    RecordingExecutor.seen = []
    snap = snapshot.make_snapshot(tmp_path / "runs" / "s", _package(tmp_path / "site"))
    planned = [_trial(tmp_path, "t1", snap.id), _trial(tmp_path, "t2", None)]
    before = dict(os.environ)
    local.run_local(planned, max_parallel=1, timeout_min=1)
    with_snap, without = RecordingExecutor.seen
    assert with_snap["PYTHONPATH"].split(os.pathsep)[0] == str(snap.path)
    assert with_snap["PYTHONSAFEPATH"] == "1"
    assert without.get("PYTHONPATH") == before.get("PYTHONPATH")
    assert "PYTHONSAFEPATH" not in without or before.get("PYTHONSAFEPATH")
    assert dict(os.environ) == before


def test_slurm_arrays_carry_the_snapshot_lines(tmp_path, monkeypatch):
    from bilma.sweep.backends import slurm
    from bilma.sweep.backends.profiles import Profile

    seen = {}

    def fake_submit_array(folder, profile, job_name, params, fns, again):
        seen.update(params)
        return [object() for _ in fns]  # one job per function, as submitit's array gives

    monkeypatch.setattr(slurm, "submit_array", fake_submit_array)
    snap = snapshot.make_snapshot(tmp_path / "runs" / "s", _package(tmp_path / "site"))
    p = _trial(tmp_path, "t1", snap.id)
    slurm._submit_trials([p], Profile(setup=["module load x"]))
    assert seen["setup"][1] == "module load x"  # the profile's first, then the snapshot
    assert seen["setup"][2:] == snapshot.setup_lines(p.dir.path)


def test_a_relaunch_after_an_edit_says_which_trials_run_the_new_code(tmp_path):
    queued = _trial(tmp_path, "t1", "aaaaaaaaaaaa", Action.SKIP_RUNNING)
    resumed = _trial(tmp_path, "t2", "aaaaaaaaaaaa", Action.RESUME)
    new = _trial(tmp_path, "t3", None, Action.SUBMIT)
    done = _trial(tmp_path, "t4", "bbbbbbbbbbbb", Action.SKIP_DONE)
    line = snapshot.changed_line([queued, resumed, new, done], "cccccccccccc")
    assert line == (
        "code changed since trials were submitted (snapshot aaaaaaaaaaaa, now cccccccccccc): "
        "2 trial(s) this launch starts run the new code; 1 queued or running keep the "
        "snapshot they were submitted with"
    )
    assert snapshot.changed_line([queued, resumed, new, done], "aaaaaaaaaaaa") is None


def test_no_snapshot_and_nothing_to_run_make_none(tmp_path, capsys):
    p = _trial(tmp_path, "t1", None)
    assert snapshot.for_launch([p], enabled=False) is None
    assert snapshot.for_launch([_trial(tmp_path, "t2", None, Action.SKIP_DONE)]) is None
    assert not (tmp_path / "runs" / "s" / ".code").exists()
    snap = snapshot.for_launch([p])
    assert snap is not None and snap.path.parent == tmp_path / "runs" / "s" / ".code"
    assert f"code: snapshot {snap.id}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- end to end


def throwaway_checkout(dest: Path) -> Path:
    """A git checkout of this worktree's code (the package, configs, grids, profiles) at
    `dest`, committed: a launch from it snapshots it; the test may break it afterwards."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "bilma", dest / "bilma", symlinks=True, ignore=skip)
    for folder in ("configs", "sweeps", "cluster/profiles"):
        shutil.copytree(REPO / folder, dest / folder, ignore=skip)
    (dest / "analysis").mkdir()
    shutil.copy(REPO / "analysis" / "published.yaml", dest / "analysis")
    (dest / ".gitignore").write_text("__pycache__/\n/runs/\n")
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", "throwaway")
    return dest


def break_checkout(checkout: Path) -> None:
    """Importing `bilma` from `checkout` now fails."""
    (checkout / "bilma" / "__init__.py").write_text("raise ImportError('broken checkout')\n")
    broken = subprocess.run(
        [sys.executable, "-c", "import bilma"],
        cwd=checkout,
        env=dict(os.environ, PYTHONPATH=str(checkout)),
        capture_output=True,
        text=True,
    )
    assert "broken checkout" in broken.stderr


def write_grid(path: Path, study: str, overrides: list[str], seeds=(1, 2)) -> Path:
    grid = {
        "study": study,
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": list(seeds),
        "set": dict(parse_override(o) for o in overrides),
        "variants": {"only": {}},
    }
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def launcher(checkout: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m bilma sweep ARGS` run from `checkout`, importing that checkout's bilma."""
    env = dict(env or os.environ, PYTHONPATH=str(checkout), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "bilma", "sweep", *args],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def assert_ran_snapshot(trial: Path) -> str:
    """The trial is done and its trainer imported the snapshot its launch.json names."""
    assert (trial / "result.json").is_file(), f"{trial.name} has no result"
    code = read_launch(trial).code
    assert code, f"{trial}/launch.json names no snapshot"
    prov = json.loads((trial / "provenance.json").read_text())
    assert prov.get("code_snapshot") == code, f"{trial.name} did not import its snapshot"
    assert prov.get("code_path") == str(trial.parent / ".code" / code / "bilma")
    return code


@pytest.mark.slow
def test_local_trials_run_the_launched_code_after_the_checkout_breaks(synth_small, tmp_path):
    """Two trials one after another: the checkout is broken while the first trains, so the
    second job starts on a checkout whose `import bilma` fails; both finish on the snapshot."""
    checkout = throwaway_checkout(tmp_path / "repo")
    sets = tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1")
    grid = write_grid(tmp_path / "g.yaml", "frozen-local", sets)
    proc = launcher(checkout, "--grid", str(grid), "--max-parallel", "1")
    study = tmp_path / "runs" / "frozen-local"
    deadline = time.time() + 300
    while not list(study.glob("*/status.json")) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    break_checkout(checkout)  # before the second trial's job starts
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    trials = sorted(p.parent for p in study.glob("*/config.yaml"))
    assert len(trials) == 2
    codes = {assert_ran_snapshot(t) for t in trials}
    assert len(codes) == 1 and f"code: snapshot {(code := codes.pop())}" in out
    # --status (from a working checkout) shows each trial's snapshot
    table = subprocess.run(
        [sys.executable, "-m", "bilma", "sweep", "--grid", str(grid), "--status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    assert table.splitlines()[0].split()[-2:] == ["code", "log"], table
    assert table.count(f" {code[:8]} ") == 2, table


@pytest.mark.slow
def test_ray_workers_import_the_snapshot_not_the_checkout_they_start_in(synth_small, tmp_path):
    """Launched from the checkout's root (Ray puts the driver's folder first on every
    worker's path): the trial's trainer still imports the snapshot."""
    pytest.importorskip("ray")
    checkout = throwaway_checkout(tmp_path / "repo")
    sets = tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1")
    grid = write_grid(tmp_path / "g.yaml", "frozen-ray", sets, seeds=(1,))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = launcher(checkout, "--grid", str(grid), "--backend", "ray", env=env)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    (trial,) = (p.parent for p in (tmp_path / "runs" / "frozen-ray").glob("*/config.yaml"))
    assert_ran_snapshot(trial)


# ----------------------------------------------------------------------------- real SLURM


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM client here (start one with `cluster/dev-slurm.sh start`)"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0 or not set(out.stdout.split()) & {"idle", "mixed", "allocated"}:
        return f"SLURM is not up (sinfo: {out.stdout.strip()}); run `cluster/dev-slurm.sh start`"
    return None


@pytest.mark.slurm  # about 7 s on the dev cluster: in CI
def test_held_slurm_jobs_run_the_submitted_snapshot(synth_small, tmp_path):
    """Submitted held (`--hold`), the checkout then broken so that `import bilma` fails,
    the jobs released: every trial finishes and records the snapshot it was submitted with."""
    problem = _cluster_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    checkout = throwaway_checkout(tmp_path / "repo")
    profile = yaml.safe_load((REPO / "cluster" / "profiles" / "local-slurm.yaml").read_text())
    profile.update(sbatch_extra=["--hold"], time_min=20)
    (tmp_path / "held.yaml").write_text(yaml.safe_dump(profile))
    sets = tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1")
    study = f"frozen-slurm-{os.getpid()}"
    grid = write_grid(tmp_path / "g.yaml", study, sets)
    args = ["--grid", str(grid), "--backend", "slurm", "--profile", str(tmp_path / "held.yaml")]
    out, _ = launcher(checkout, *args).communicate(timeout=300)
    assert "submitted 2 trials as job array" in out, out
    job = out.split("job array ")[1].split()[0]
    try:
        states = subprocess.run(
            ["squeue", "-h", "-r", "-j", job, "-o", "%T %r"], capture_output=True, text=True
        ).stdout
        assert states.count("PENDING") == 2 and "Held" in states, states  # held, not started
        break_checkout(checkout)
        subprocess.run(["scontrol", "release", job], check=True)
        trials = sorted(p.parent for p in (tmp_path / "runs" / study).glob("*/config.yaml"))
        assert len(trials) == 2
        deadline = time.time() + 900
        while time.time() < deadline:
            alive = subprocess.run(
                ["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True
            ).stdout.split()
            if not alive or all((t / "result.json").is_file() for t in trials):
                break
            time.sleep(2)
        logs = "".join(
            p.read_text(errors="replace")
            for p in (tmp_path / "runs" / study / "slurm").glob("*/*_log.*")
        )
        for t in trials:
            assert (t / "result.json").is_file(), logs[-3000:]
        codes = {assert_ran_snapshot(t) for t in trials}
        assert len(codes) == 1
    finally:
        subprocess.run(["scancel", job], capture_output=True)
