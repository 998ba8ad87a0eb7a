"""Reuse across studies: a trial already finished under another study is not trained again.

A trial id leaves the study out (`runs/<study>/<trial_id>/`), so the same experiment planned
by two studies under one runs root has one id. Before anything runs, each new trial of the
plan is looked up in the other studies' folders (one directory listing per study):

    done there        Action.REUSE: at launch its directory here records the other study's
                      result (`bilma.runs.reuse.link_reused`): no training, counted in both
                      studies' tables, mirrored to MLflow in this study tagged reused_from
    running there     Action.SKIP_ELSEWHERE: not started a second time; relaunch this study
                      after it ends and it is reused then (one line says so)
    anything else     trained here as usual (a failed or half-trained trial of another study
                      is not this study's to resume)

`--no-reuse` trains every new trial in its own study. A trial reused once stays done: to train
it here, delete its result.json (its checkpoint link is removed before it trains).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bilma.errors import first_line
from bilma.runs.lock import claim
from bilma.runs.reuse import link_reused, reused_from, unlink_reused_ckpt
from bilma.runs.trial_dir import TrialDir
from bilma.sweep.expand import Grid
from bilma.sweep.plan import Action, Planned, classify, reuse_summary  # noqa: F401

log = logging.getLogger(__name__)


def plan_reuse(planned: list[Planned], enabled: bool = True) -> None:
    """Mark the plan's new trials that another study under the same runs root has finished
    (REUSE) or runs now (SKIP_ELSEWHERE), naming that study in the note. Writes nothing."""
    new = [p for p in planned if p.action is Action.SUBMIT]
    if not enabled or not new:
        return
    by_root: dict[Path, list[Planned]] = {}
    for p in new:
        by_root.setdefault(p.dir.path.parent.parent, []).append(p)
    for root, ps in by_root.items():
        index = _index(root, {p.dir.trial_id for p in ps})
        for p in ps:
            own = p.dir.path.parent.name
            others = [s for s in index.get(p.dir.trial_id, []) if s != own]
            _choose(p, [TrialDir(root / s / p.dir.trial_id) for s in sorted(others)])


def _index(root: Path, wanted: set[str]) -> dict[str, list[str]]:
    """{trial id: the studies under root holding a folder of that name}, for `wanted` ids:
    one listing per study folder (a stat per trial and study would cost 1,000 x studies)."""
    out: dict[str, list[str]] = {}
    try:
        studies = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    except OSError:  # no runs root yet
        return out
    for study in studies:
        try:
            names = os.listdir(study.path)
        except OSError:
            continue
        for name in wanted.intersection(names):
            out.setdefault(name, []).append(study.name)
    return out


def _choose(p: Planned, candidates: list[TrialDir]) -> None:
    """Reuse the first finished candidate (one that trained, rather than reused, first);
    else say which one runs now."""
    done, running = [], []
    for d in candidates:
        action, note = classify(d, retry_failed=False)
        if action is Action.SKIP_DONE and d.result_path.is_file():  # not stopped early
            done.append(d)
        elif action is Action.SKIP_RUNNING:
            running.append((d, note))
    if done:
        src = min(done, key=lambda d: reused_from(d) is not None)
        p.action, p.source, p.note = Action.REUSE, src, f"from study {src.path.parent.name}"
    elif running:
        src, why = running[0]
        p.action, p.source = Action.SKIP_ELSEWHERE, src
        p.note = f"in study {src.path.parent.name} ({why}); relaunch after it ends to reuse it"


def apply_reuse(grid: Grid, planned: list[Planned]) -> list[Planned]:
    """Record each REUSE trial in its directory (under its claim, re-read first: a second
    launcher of this study may have done it); they become done. Trials to train whose folder
    holds an old reuse's checkpoint link lose the link first. The trials reused now."""
    reused = []
    for p in planned:
        if p.action.runs() and unlink_reused_ckpt(p.dir) and p.action is Action.RESUME:
            p.action, p.note = Action.SUBMIT, "its reused checkpoints unlinked"
        if p.action is not Action.REUSE or p.source is None:
            continue
        with claim(p.dir.path):
            action, note = classify(p.dir, retry_failed=False)
            if action is not Action.SUBMIT:  # done (or started) meanwhile
                p.action, p.note = action, note
                continue
            cfg = p.trial.config
            settings = {"enabled": cfg.tracking.enabled, "uri": cfg.tracking.uri}
            launch = p.trial.launch(str(grid.path), None, settings)
            link_reused(p.source, p.dir, cfg, launch)
        p.action, p.note = Action.SKIP_DONE, f"reused {p.note}"
        reused.append(p)
    return reused


def mirror_reused(grid: Grid, reused: list[Planned], parent: str | None) -> None:
    """Show the reused trials in this study's MLflow experiment (under the sweep's parent run;
    found or made when the launch made none). Never raises: `bilma sync` does it later."""
    cfg = reused[0].trial.config if reused else None
    if cfg is None or not cfg.tracking.enabled:
        return
    from bilma.tracking.mirror import MlflowMirror
    from bilma.tracking.parent import FROM_TRIALS, find_parent, update_parent
    from bilma.tracking.store import resolve_uri

    uri = resolve_uri(cfg.tracking.uri)
    try:
        run_id = parent or find_parent(uri, grid.study, grid.path.stem)
        for p in reused:
            MlflowMirror(p.dir, p.trial.config, parent_run_id=run_id, uri=uri).sync()
        if parent is None:  # no trial runs under it: its summary now, ended if all ended
            update_parent(uri, run_id, [reused[0].dir.path.parent], FROM_TRIALS)
    except Exception as e:  # MLflow down: the trial directories hold everything
        log.warning(
            "MLflow at %s: %d reused trial(s) not mirrored (%s); run `python -m bilma sync "
            "--runs %s` later",
            uri,
            len(reused),
            first_line(e),
            cfg.paths.runs,
        )
