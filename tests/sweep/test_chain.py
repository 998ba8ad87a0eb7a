"""Chained jobs (`bilma.sweep.chain`): a SemMIM grid without its parse maps parses them first.

The data: the session's small synthetic dataset read as CUHK-PEDES (the synthetic set is
written in that format), with its parse maps looked for in an empty folder of the test's.
The SLURM tests run against the REAL single-node SLURM of `cluster/dev-slurm.sh start`
(marked `slurm` and slow: `.ci/run` starts the cluster; by hand they are skipped without one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from support import slurm as slurm_support
from support.paths import REPO
from support.slurm import run_launch
from support.tiny import tiny_overrides

from bilma.config import parse_override
from bilma.runs.trial_dir import TrialDir
from bilma.sweep import chain
from bilma.sweep.backends import slurm
from bilma.sweep.cli import main
from bilma.sweep.plan import Action, Planned

cluster, jobs = slurm_support.cluster, slurm_support.jobs  # the fixtures
SEMMIM = {"mim.target": "semantic", "mim.labels": "atr18", "loss.mim_weight": 1}


def semmim_grid(
    tmp_path: Path, data: Path, study: str = "semmim", variants: dict | None = None, *extra: str
) -> Path:
    """A grid of the tiny model on `data` read as CUHK-PEDES, maps under tmp_path/maps."""
    sets = tiny_overrides(
        data,
        tmp_path / "runs",
        "data.dataset=cuhk-pedes",
        f"data.tokenizer={data / 'tokenizer'}",
        f"data.parsing_root={tmp_path / 'maps'}",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        *extra,
    )
    grid = {
        "study": study,
        "base": str(REPO / "configs" / "synth_tiny.yaml"),
        "seeds": [1],
        "set": dict(parse_override(o) for o in sets),
        "variants": variants or {"SemMIM": SEMMIM},
    }
    path = tmp_path / f"{study}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def fake_parser(folder: Path) -> Path:
    """A folder that passes the launch's check (config.json) but holds no model: its parse
    fails when a shard loads it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


# ----------------------------------------------------------------------------- planning


def test_dry_run_shows_the_chain_and_without_parser_refuses(synth_small, tmp_path, capsys):
    variants = {"IRRA": {"loss.mim_weight": 0}, "SemMIM": SEMMIM}
    grid = str(semmim_grid(tmp_path, synth_small, variants=variants))
    parser = fake_parser(tmp_path / "parser")
    base = ["--grid", grid, "--backend", "slurm", "--profile", "local-slurm", "--dry-run"]

    assert main([*base, "--parser", str(parser), "--parse-shards", "3"]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("chain:")]
    assert line == (
        f"chain: parse array: 3 shards (cuhk-pedes atr18 -> {tmp_path / 'maps' / 'atr18'}) -> "
        "training: 1 trial after it (--dependency=afterok:<parse array> --kill-on-invalid-dep=yes)"
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "maps").exists()

    # The local backend: parse here first, then the training.
    assert main([*base[:2], "--dry-run", "--parser", str(parser)]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("chain:")]
    assert line.startswith("chain: parse 1 shard on this machine (cuhk-pedes atr18")
    assert line.endswith("then training: 1 trial")

    # No --parser: refused as before, the message naming the option.
    assert main(base) == 2
    captured = capsys.readouterr()
    assert "chain:" not in captured.out
    assert "mim.labels=atr18 (1 trial)" in captured.err and "--parser <parser" in captured.err


def test_a_parser_folder_without_config_json_refuses(synth_small, tmp_path, capsys):
    grid = str(semmim_grid(tmp_path, synth_small))
    assert main(["--grid", grid, "--dry-run", "--parser", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert f"--parser={tmp_path / 'nothing'} (1 trial): not a local parser folder" in err


def test_missing_dataset_plans_no_parse_and_refuses(tmp_path, capsys):
    """Another problem (here the dataset itself) refuses the launch whole: no chain."""
    missing = tmp_path / "no-such-dataset"
    grid = str(semmim_grid(tmp_path, missing))
    parser = fake_parser(tmp_path / "parser")
    assert main(["--grid", grid, "--parser", str(parser)]) == 2
    captured = capsys.readouterr()
    assert f"data.root={missing} (1 trial): no such folder" in captured.err
    assert "chain:" not in captured.out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "maps").exists()


def test_maps_already_there_plan_no_chain(synth_small, tmp_path, capsys):
    """With every map present (the synthetic set's own, as ATR-18), nothing is parsed unless
    the preflight is skipped."""
    grid = semmim_grid(tmp_path, synth_small)
    tree = yaml.safe_load(grid.read_text())
    tree["set"]["data.parsing_root"] = str(synth_small / "parsing")
    grid.write_text(yaml.safe_dump(tree))
    parser = fake_parser(tmp_path / "parser")
    assert main(["--grid", str(grid), "--dry-run", "--parser", str(parser)]) == 0
    assert "chain:" not in capsys.readouterr().out
    # --no-preflight (data only the compute nodes see): every SemMIM group is parsed first,
    # the parse skipping what is there
    assert main(["--grid", str(grid), "--dry-run", "--parser", str(parser), "--no-preflight"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("chain:")]
    assert f"(cuhk-pedes atr18 -> {synth_small / 'parsing' / 'atr18'})" in line


# ----------------------------------------------------------------------------- SLURM submission


def _planned(tmp_path: Path, name: str, **status) -> Planned:
    d = TrialDir(tmp_path / "runs" / "s" / name)
    d.path.mkdir(parents=True)
    if status:
        d.set_status(status.pop("state", "pending"), backend="slurm", **status)
    trial = SimpleNamespace(study="s", variant=name, seed=0, config=None)
    return Planned(trial, d, Action.SUBMIT, backend="slurm" if status else None)  # type: ignore[arg-type]


def test_slurm_submits_waiting_trials_as_their_own_array(tmp_path, monkeypatch, capsys):
    """Trials that wait on a parse array go out as an array with afterok and
    kill-on-invalid-dep; the others as another one, without; status.json names the wait."""
    seen: list[tuple[dict, int]] = []

    def fake_submit_array(folder, profile, job_name, params, fns, again):
        seen.append((params, len(fns)))
        base = 40 + len(seen)
        return [SimpleNamespace(job_id=f"{base}_{i}") for i in range(len(fns))]

    monkeypatch.setattr(slurm, "submit_array", fake_submit_array)
    monkeypatch.setattr(slurm, "max_array_size", lambda: 64)
    planned = [_planned(tmp_path, n) for n in ("a", "b", "c")]
    backend = slurm.SlurmBackend("local-slurm", status_command="status")
    backend.after = {planned[0].dir.path: "17", planned[2].dir.path: "17"}
    assert backend.submit(None, planned, None) == 0  # type: ignore[arg-type]

    (waiting, n_waiting), (free, n_free) = seen
    assert (n_waiting, n_free) == (2, 1)
    assert waiting["dependency"] == "afterok:17"
    assert waiting["additional_parameters"]["kill_on_invalid_dep"] == "yes"
    assert "dependency" not in free and "kill_on_invalid_dep" not in free.get(
        "additional_parameters", {}
    )
    after = {
        p.dir.path.name: (p.dir.status()["job_id"], p.dir.status()["after_job"]) for p in planned
    }
    assert after == {"a": ("41_0", "17"), "c": ("41_1", "17"), "b": ("42_0", None)}
    assert "submitted 3 trials as 2 job arrays 41, 42" in capsys.readouterr().out


def test_reconcile_records_the_failed_parse_and_holds_the_trials(tmp_path, monkeypatch):
    """A trial cancelled with its failed parse array: status.json says so, and it is not
    submitted again while its maps are missing, unless this launch parses first."""
    waited = _planned(tmp_path, "waited", job_id="9_0", after_job="8")
    cancelled_by_hand = _planned(tmp_path, "by-hand", job_id="9_1", after_job="7")
    plain = _planned(tmp_path, "plain", job_id="10_0")
    data = SimpleNamespace(root=str(tmp_path / "data"), parsing_root=str(tmp_path / "maps"))
    for p in (waited, cancelled_by_hand):
        p.trial.config = SimpleNamespace(data=data)
    log = tmp_path / "maps" / "jobs" / "8_1" / "8_1_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text(
        "Traceback ...\n  raise DataError(\nbilma.errors.DataError: no parser\nsrun: error\n"
    )
    jobs = {"9_0": "CANCELLED", "9_1": "CANCELLED by 0", "10_0": "CANCELLED by 0"}
    arrays = {"8": {"8_0": "COMPLETED", "8_1": "FAILED"}, "7": {"7_0": "COMPLETED"}}
    monkeypatch.setattr(slurm, "job_states", lambda ids: {j: jobs[j] for j in ids})
    monkeypatch.setattr(slurm, "array_states", lambda a: arrays[a])
    monkeypatch.setattr("bilma.sweep.preflight.parse_maps_problem", lambda cfg: "missing")
    planned = [waited, cancelled_by_hand, plain]

    chain.reconcile(planned, SimpleNamespace(parser=None))
    status = waited.dir.status()
    assert status["state"] == "failed"
    assert status["error"] == (
        "parse failed (job 8: 8_1 FAILED): bilma.errors.DataError: no parser; "
        f"log {log}; SLURM cancelled this trial's job 9_0 that waited on it"
    )
    assert waited.action is Action.SKIP_FAILED and "--parser" in waited.note
    # cancelled while its parse succeeded, or never chained: left to the SLURM backend
    assert [p.action for p in (cancelled_by_hand, plain)] == [Action.SUBMIT, Action.SUBMIT]
    assert cancelled_by_hand.dir.status()["state"] == "pending"
    notes = chain.job_notes(planned, {waited.dir.path: "9_0 CANCELLED"})
    assert notes == {waited.dir.path: "9_0 CANCELLED: parse failed (job 8: 8_1 FAILED)"}

    # A launch that parses first submits it again (the status.json error is written once).
    waited.action = Action.SKIP_FAILED
    chain.reconcile(planned, SimpleNamespace(parser=Path("parser")))
    assert waited.action is Action.SUBMIT and waited.dir.status()["error"] == status["error"]
    # So does one that finds the maps there now.
    waited.action = Action.SKIP_FAILED
    monkeypatch.setattr("bilma.sweep.preflight.parse_maps_problem", lambda cfg: None)
    chain.reconcile(planned, SimpleNamespace(parser=None))
    assert waited.action is Action.SUBMIT


# ----------------------------------------------------------------------------- local order


def test_local_runs_each_parse_before_the_training(synth_small, tmp_path, monkeypatch, capsys):
    """Recorded order of the local backend: the parse step ends before any trial starts; a
    step whose parse failed leaves its trials failed and unstarted, the others run."""
    from bilma.sweep import parse_shards

    calls: list[str] = []
    monkeypatch.setattr(
        parse_shards,
        "run_local",
        lambda ns, shards: calls.append(f"parse {ns.labels} x{len(shards)}") or ns.labels == "ppp7",
    )

    def fake_submit(self, grid, planned, parent):
        calls.append("train " + ",".join(p.trial.variant for p in planned if p.action.runs()))
        return 0

    monkeypatch.setattr("bilma.sweep.backends.local.LocalBackend.submit", fake_submit)
    ppp7 = dict(SEMMIM, **{"mim.labels": "ppp7"})
    variants = {"IRRA": {"loss.mim_weight": 0}, "ATR": SEMMIM, "PPP": ppp7}
    grid = semmim_grid(tmp_path, synth_small, "order", variants)
    parser = fake_parser(tmp_path / "parser")
    code = main(["--grid", str(grid), "--parser", str(parser), "--parse-shards", "2"])

    assert calls == ["parse atr18 x2", "parse ppp7 x2", "train IRRA,ATR"]
    assert code == 1  # a parse failed
    trials = (tmp_path / "runs" / "order").glob("*/launch.json")
    (ppp,) = [f.parent for f in trials if json.loads(f.read_text())["variant"] == "PPP"]
    status = json.loads((ppp / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("parse failed (local")
    assert status["attempts"] == 0
    assert "chain: 1 trial(s) not started: their parse failed" in capsys.readouterr().out


@pytest.mark.slow
def test_local_backend_parses_then_trains_in_one_command(synth_small, tmp_path, capsys):
    """For real: a tiny SegFormer parses the maps, then the SemMIM trial trains on them."""
    from support.parse_fixtures import make_parser

    grid = semmim_grid(tmp_path, synth_small, "local-chain")
    parser = make_parser(tmp_path / "parser")
    assert main(["--grid", str(grid), "--parser", str(parser), "--max-parallel", "1"]) == 0
    maps = sorted((tmp_path / "maps" / "atr18").rglob("*.png"))
    assert len(maps) == 60  # every image of the dataset, all splits
    (trial,) = [d for d in (tmp_path / "runs" / "local-chain").iterdir() if d.is_dir()]
    assert json.loads((trial / "result.json").read_text())["metrics"]["R1"] >= 0
    started = json.loads((trial / "status.json").read_text())["started"]
    assert max(m.stat().st_mtime for m in maps) < started
    assert "chain: parsing cuhk-pedes atr18" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the real SLURM


def on_slurm(test):
    """A test that needs the local SLURM."""
    return pytest.mark.slurm(test)  # 0.5-15 s each on the dev cluster: in CI


DEADLINE = 900  # seconds: the node is shared with other tests' jobs


def launch(*args: str, cwd: Path, code: int = 0) -> str:
    proc = run_launch(*args, cwd=cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    return out


def wait_for(what: str, check, timeout: float = DEADLINE):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := check():
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sacct(job: str, fields: str = "JobID,State") -> dict[str, list[str]]:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", fields, "-j", job], capture_output=True, text=True
    )
    return {line.split("|")[0]: line.split("|")[1:] for line in out.stdout.splitlines()}


def submitted(out: str) -> tuple[str, str]:
    """(the parse array, the training job) a chained launch printed (one trial: a plain job)."""
    parse = re.search(r"submitted \d+ parse shards as job array (\d+)", out)
    train = re.search(r"^\s+(\d+(?:_\d+)?)\s", out, re.MULTILINE)
    assert parse and train, out
    return parse.group(1), train.group(1)


def chained_args(tmp_path: Path, data: Path, parser: Path, study: str) -> list[str]:
    grid = semmim_grid(tmp_path, data, study)
    return ["--grid", str(grid), "--backend", "slurm", "--profile", "local-slurm",
            "--parser", str(parser), "--parse-shards", "2"]  # fmt: skip


@on_slurm
def test_semmim_grid_without_maps_parses_then_trains(cluster, jobs, synth_small, tmp_path):
    from support.parse_fixtures import make_parser

    args = chained_args(tmp_path, synth_small, make_parser(tmp_path / "parser"), "chain-ok")
    out = launch(*args, cwd=tmp_path)
    parse, train = submitted(out)
    jobs += [parse, train]
    assert "chain: 1 trial(s) start after parse array " + parse in out
    (trial,) = [d.parent for d in (tmp_path / "runs" / "chain-ok").glob("*/config.yaml")]
    status = json.loads((trial / "status.json").read_text())
    assert (status["job_id"], status["after_job"]) == (train, parse)

    result = wait_for("the trial's result", lambda: _result_or_failure(trial))
    assert result["metrics"]["R1"] >= 0
    assert len(list((tmp_path / "maps" / "atr18").rglob("*.png"))) == 60
    # SLURM's own record: both shards ended before the training task started.
    ends = [v[1] for k, v in sacct(parse, "JobID,State,End").items() if k.startswith(parse + "_")]
    assert len(ends) == 2
    (start,) = [v[1] for k, v in sacct(train, "JobID,State,Start").items() if k == train]
    assert max(ends) <= start


def _result_or_failure(trial: Path) -> dict | None:
    if (trial / "result.json").exists():
        return json.loads((trial / "result.json").read_text())
    status = json.loads((trial / "status.json").read_text())
    assert status["state"] != "failed", status.get("error")
    return None


@on_slurm
def test_failed_parse_cancels_the_training_with_the_reason(cluster, jobs, synth_small, tmp_path):
    """A parser folder without weights: every shard fails, SLURM cancels the training job
    (kill-on-invalid-dep), and --status says why; a relaunch without --parser holds it."""
    args = chained_args(tmp_path, synth_small, fake_parser(tmp_path / "parser"), "chain-bad")
    parse, train = submitted(launch(*args, cwd=tmp_path))
    jobs += [parse, train]

    def cancelled() -> bool:
        states = sacct(train)
        return bool(states) and all(v[0].startswith("CANCELLED") for v in states.values())

    wait_for("SLURM to cancel the training job", cancelled)
    assert any(v[0] == "FAILED" for v in sacct(parse).values())

    status_args = [a for a in args[:6]]  # grid, backend, profile: no --parser
    out = launch(*status_args, "--status", cwd=tmp_path)
    assert f"parse failed (job {parse}: {parse}_0 FAILED" in out, out
    (trial,) = [d.parent for d in (tmp_path / "runs" / "chain-bad").glob("*/config.yaml")]
    status = json.loads((trial / "status.json").read_text())
    assert status["state"] == "failed" and status["attempts"] == 0
    assert status["error"].startswith(f"parse failed (job {parse}: ")
    assert f"SLURM cancelled this trial's job {train} " in status["error"]
    assert "DataError: cannot load a semantic-segmentation model" in status["error"]

    # Relaunched without --parser while the maps are missing: refused (nothing queued).
    again = launch(*status_args, "--retry-failed", cwd=tmp_path, code=1)
    assert "nothing to submit: every trial is done or failed" in again
    assert json.loads((trial / "status.json").read_text())["job_id"] == train


@on_slurm
def test_ablation_grid_without_its_dataset_queues_nothing_not_even_a_parse(cluster, tmp_path):
    """The literal ablation grid (SemMIM LIP-20 among its variants) with --parser on a
    machine without CUHK-PEDES: refused before any parse or training job exists."""
    parser = fake_parser(tmp_path / "parser")
    grid = yaml.safe_load((REPO / "sweeps" / "grids" / "ablation.yaml").read_text())
    grid.update(study="ablation-chain-test", base=str(REPO / grid["base"]))
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(grid))
    t0 = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    out = launch("--grid", "ablation.yaml", "--backend", "slurm", "--profile", "local-slurm",
                 "--parser", str(parser), cwd=tmp_path, code=2)  # fmt: skip
    assert "data.root=datasets/CUHK-PEDES (9 trials): no such folder" in out
    assert "chain:" not in out
    names = "bilma-ablation-chain-test,bilma-parse-cuhk-pedes"
    since = subprocess.run(["sacct", "-n", "-X", "-S", t0, "--name", names, "-o", "JobID"],
                           capture_output=True, text=True)  # fmt: skip
    assert since.returncode == 0 and since.stdout.strip() == ""
    assert sorted(os.listdir(tmp_path)) == ["ablation.yaml", "parser"]
