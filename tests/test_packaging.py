"""Guards the wheel: that `bilma` works installed, away from any checkout.

The wheel is built from the checkout (leaving no build/ or egg-info behind), holds only the
`bilma` package with real copies of the configs, grids, profiles, published numbers and
parse label maps, and, installed into a folder of its own and run from an empty directory,
`bilma sweep --dry-run` (local and SLURM) and `bilma tables --help` work from its files alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.paths import REPO


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def checkout_state() -> dict:
    """What building might change: git's view, a build/ folder, the egg-info's files."""
    git = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    return {
        # a copy of the repository that is not a git checkout still compares the rest
        "git status": git.stdout if git.returncode == 0 else None,
        "build/": (REPO / "build").exists(),
        "egg-info": {str(p): p.stat().st_mtime_ns for p in REPO.glob("*.egg-info/*")},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel, checkout state before the build, after it)."""
    out = tmp_path_factory.mktemp("wheel")
    # setuptools reads this extra config file: its build/ and egg-info go out of the tree.
    extra = out / "setup.cfg"
    extra.write_text(f"[build]\nbuild_base = {out / 'build'}\n[egg_info]\negg_base = {out}\n")
    before = checkout_state()
    run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation"]
        + ["-w", str(out / "dist"), "-q"],
        cwd=REPO,
        env={**os.environ, "DIST_EXTRA_CONFIG": str(extra)},
    )
    (wheel,) = (out / "dist").glob("bilma-*.whl")
    return wheel, before, checkout_state()


@pytest.fixture(scope="module")
def site(built, tmp_path_factory):
    """The wheel installed (without dependencies: the venv's are used) into a folder."""
    target = tmp_path_factory.mktemp("site")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, built[0]])
    return target.resolve()


def test_building_leaves_the_checkout_as_it_was(built):
    _, before, after = built
    assert after == before


def test_the_wheel_holds_bilma_and_real_copies_of_its_files(built):
    wheel = built[0]
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE)[1]
    expected = {
        "bilma/resources/published.yaml": REPO / "analysis" / "published.yaml",
        "bilma/resources/usage.yaml": REPO / "bilma" / "resources" / "usage.yaml",
    }
    for folder, pattern, shipped_as in [
        ("sweeps/grids", "*.yaml", "bilma/resources/grids"),
        ("cluster/profiles", "*.yaml", "bilma/resources/profiles"),
        ("configs", "*.yaml", "bilma/resources/configs"),
        ("bilma/parse/maps", "*.json", "bilma/parse/maps"),
    ]:
        expected |= {f"{shipped_as}/{p.name}": p for p in (REPO / folder).glob(pattern)}
    assert "bilma/resources/grids/smoke.yaml" in expected
    assert "bilma/resources/profiles/local-slurm.yaml" in expected

    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
        assert {n.split("/")[0] for n in infos} == {"bilma", f"bilma-{version}.dist-info"}
        sources = {str(p.relative_to(REPO)) for p in (REPO / "bilma").rglob("*.py")}
        assert {n for n in infos if n.endswith(".py")} == sources
        data = {n for n in infos if n.startswith("bilma/") and not n.endswith((".py", "/"))}
        assert data == set(expected)
        for name, original in expected.items():
            assert stat.S_ISREG(infos[name].external_attr >> 16), f"{name} is not a plain file"
            assert z.read(name) == original.read_bytes(), name


# Runs `python -m bilma ...` (as runpy does for -m) and reports, on stderr's last line, where
# bilma came from and every file it read or imported: those of the checkout, those of the site.
DRIVER = """
import json, os, runpy, sys
repo, site = sys.argv.pop(1), sys.argv.pop(1)
opened = set()
sys.addaudithook(lambda event, args: event == "open" and isinstance(args[0], str)
                 and opened.add(os.path.realpath(args[0])))
try:
    runpy.run_module("bilma", run_name="__main__", alter_sys=True)
finally:
    import bilma
    files = opened | {os.path.realpath(m.__file__) for m in list(sys.modules.values())
                      if isinstance(getattr(m, "__file__", None), str)}
    def under(path, folder):
        return path == folder or path.startswith(folder + os.sep)
    print(json.dumps({
        "bilma": os.path.realpath(bilma.__file__),
        "checkout": sorted(f for f in files if under(f, repo) and not under(f, sys.prefix)),
        "site": sorted(os.path.relpath(f, site) for f in files if under(f, site)),
    }), file=sys.stderr)
"""


def run_installed(site: Path, cwd: Path, *args: str) -> tuple[str, dict]:
    """Run `python -m bilma ARGS` from `cwd` with only `site` on the path; (stdout, report)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    cmd = [sys.executable, "-c", DRIVER, str(REPO.resolve()), str(site), *args]
    proc = run(cmd, cwd=cwd, env=env)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    # PYTHONPATH comes before site-packages, and the editable finder of the venv comes last.
    assert Path(report["bilma"]) == site / "bilma" / "__init__.py"
    assert report["checkout"] == []
    return proc.stdout, report


def test_installed_commands_run_from_the_wheel_alone(site, tmp_path):
    work = tmp_path / "work"
    work.mkdir()

    out, report = run_installed(site, work, "sweep", "--grid", "smoke", "--dry-run")
    assert "smoke: 4 trials (dry run" in out
    rows = re.findall(r"^(\S.*?)\s{2,}(\d+)\s+([0-9a-f]{10})\s+submit", out, re.MULTILINE)
    golden = json.loads((REPO / "tests" / "sweep" / "golden" / "trial_ids.json").read_text())
    assert [[v, int(s), t] for v, s, t in rows] == golden["smoke"]
    assert {"bilma/resources/grids/smoke.yaml", "bilma/resources/configs/synth_tiny.yaml"} <= set(
        report["site"]
    )

    out, report = run_installed(
        site, work, "sweep", "--grid", "smoke", "--backend", "slurm", "--profile", "local-slurm",
        "--dry-run",
    )  # fmt: skip
    assert "#!/bin/bash" in out
    for line in ["#SBATCH --array=0-3%2", "#SBATCH --partition=debug", "#SBATCH --mem=4G"]:
        assert line in out.splitlines()
    assert "bilma/resources/profiles/local-slurm.yaml" in report["site"]

    out, _ = run_installed(site, work, "tables", "--help")
    assert out.startswith("usage: bilma tables")
    assert "--study NAME" in out

    assert list(work.iterdir()) == []  # a dry run writes nothing
