"""Retrieval examples of a trained trial: captions beside their top-k gallery images.

The trial's selected checkpoint (ckpt/best.pt, else ckpt/last.pt) is loaded with the config
saved in it; captions and gallery of the split are encoded as `evaluate` does; each query row
shows the caption and its top-k images, true matches framed green and the others red.
"""

from __future__ import annotations

import io
import json
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bilma.analysis.records import AnalysisError, TrialDir
from bilma.runs.schema import CONFIG_FILE, RESULT_FILE

log = logging.getLogger(__name__)

TOP_K = 10
GREEN, RED = "#1a9850", "#d73027"


@dataclass
class Query:
    caption: str
    pid: int
    images: list[Path]  # top-k gallery images, best first
    matches: list[bool]  # same person id as the caption


def _checkpoint(trial: TrialDir) -> Path:
    for path in (trial.best_ckpt, trial.last_ckpt):
        if path.is_file():
            return path
    raise AnalysisError(
        f"{trial.path}: no checkpoint (looked for {trial.best_ckpt} and {trial.last_ckpt}); "
        "is this a trial directory that trained?"
    )


def pick_trial(path: Path) -> Path:
    """`path` if it is a trial directory; else the finished trial under it (a study folder)
    with the best test R1."""
    if (path / CONFIG_FILE).is_file():
        return path
    from bilma.analysis.records import find_trials

    best: tuple[float, Path] | None = None
    for trial in find_trials(path) if path.is_dir() else []:
        try:
            result = json.loads((trial / RESULT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        r1 = float(result.get("metrics", {}).get("R1", -1.0))
        if best is None or r1 > best[0]:
            best = (r1, trial)
    if best is None:
        raise AnalysisError(f"{path}: not a trial directory, and no finished trial under it")
    return best[1]


def retrieve(
    trial_dir: Path,
    queries: int,
    split: str = "test",
    data_root: str | None = None,
    top_k: int = TOP_K,
) -> list[Query]:
    """Top-k gallery images for `queries` captions spread evenly over the split."""
    from bilma.config import ConfigError
    from bilma.data.datasets import load_data
    from bilma.data.records import DataError
    from bilma.evaluation.retrieval import encode_split
    from bilma.training.checkpoint import load_for_eval

    trial = TrialDir(trial_dir)
    if not trial.config_path.is_file():
        raise AnalysisError(f"{trial_dir}: not a trial directory (no config.yaml)")
    device = torch.device("cpu")
    try:
        model, cfg, _info = load_for_eval(_checkpoint(trial), device)
        if data_root is not None:
            cfg.data.root = data_root
        data = load_data(cfg, check_parse_maps=False)
    except (DataError, ConfigError) as e:
        raise AnalysisError(f"{e} (pass --data-root if the data moved)") from None
    records, caps = data.split(split)
    if not records:
        raise AnalysisError(f"{cfg.data.dataset} at {cfg.data.root} has no {split} split")
    t, tp, v, vp = encode_split(model, data, split, cfg, device)
    k = min(top_k, len(v))
    n = min(queries, len(t))
    chosen = np.unique(np.linspace(0, len(t) - 1, n).round().astype(int))
    out = []
    for qi in chosen:
        sims = (t[qi : qi + 1] @ v.T)[0]
        top = torch.topk(sims, k).indices.tolist()
        g = int(caps[qi])  # the caption's index in the whole dataset
        rec = data.records[int(data.caption_record[g])]
        first = int(np.searchsorted(data.caption_record, data.caption_record[g]))
        gallery = [data.records[records[i]] for i in top]
        out.append(
            Query(
                caption=rec.captions[g - first],
                pid=int(tp[qi]),
                images=[data.image_dir / r.image_path for r in gallery],
                matches=[int(vp[i]) == int(tp[qi]) for i in top],
            )
        )
    return out


def draw(queries: list[Query], title: str, path: Path) -> Path:
    """One PNG: a row per query, the caption then its top-k images framed green or red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from bilma.fileio import atomic_write_bytes

    k = max(len(q.images) for q in queries)
    fig, axes = plt.subplots(
        len(queries),
        k + 1,
        figsize=(1.0 * k + 3.0, 2.0 * len(queries) + 0.4),
        squeeze=False,
        gridspec_kw={"width_ratios": [3.0] + [1.0] * k},
    )
    for row, q in zip(axes, queries, strict=True):
        row[0].axis("off")
        row[0].text(
            0.0, 0.5, textwrap.fill(q.caption, 40), va="center", ha="left", fontsize=8, wrap=True
        )
        for j, ax in enumerate(row[1:]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(q.images):
                ax.axis("off")
                continue
            with Image.open(q.images[j]) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
            color = GREEN if q.matches[j] else RED
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4)
            ax.set_title(str(j + 1), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def log_to_mlflow(trial_dir: Path, figure: Path) -> str | None:
    """Log the figure as an artifact (figures/) of the trial's MLflow run; the run id, or
    None when the trial has no run (tracking off) or MLflow fails (a warning says why)."""
    trial = TrialDir(trial_dir)
    try:
        saved: dict[str, Any] = json.loads(trial.mlflow_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        log.warning("%s has no MLflow run (mlflow.json): the figure is not logged", trial_dir)
        return None
    run_id, uri = saved.get("run_id"), saved.get("tracking_uri")
    if not run_id or not uri:
        return None
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).log_artifact(run_id, str(figure), artifact_path="figures")
    except Exception as e:
        log.warning("could not log %s to MLflow at %s: %s", figure, uri, str(e).splitlines()[0])
        return None
    return run_id
