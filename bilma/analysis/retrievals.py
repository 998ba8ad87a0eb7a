"""Retrieval examples of a trained trial: captions beside their top-k gallery images.

The checkpoint the tables report is loaded with the config saved in it: for a finished
trial ckpt/best.pt, the one result.json's "selection" names (its epoch is checked); for an
unfinished one best.pt, else last.pt. Captions and gallery of the split are encoded as
`evaluate` does; each query row shows the caption (wrapped, never cut: the row grows) and its
top-k images, true matches framed green and the others red. The figure is titled by the
trial's variant and seed.

Given a study folder, the trial shown is chosen by a rule that looks at no test number: the
first row of the study's table (the grid's first variant at its first grid point), on its
first dataset, its lowest seed; `variant` and `seed` choose another.
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

from bilma.analysis.aggregate import dataset_axes, dataset_name, dataset_rank, row_order
from bilma.analysis.records import AnalysisError, TrialDir, TrialRecord, load_dirs
from bilma.runs.schema import CONFIG_FILE

log = logging.getLogger(__name__)

TOP_K = 10
GREEN, RED = "#1a9850", "#d73027"


@dataclass
class Query:
    caption: str
    pid: int
    images: list[Path]  # top-k gallery images, best first
    matches: list[bool]  # same person id as the caption


@dataclass(frozen=True)
class Shown:
    """The trial a figure shows, named as the table names it, and its checkpoint."""

    trial: Path
    variant: str  # the row label: "BiLMa [id_weight=0.5]"
    seed: int
    dataset: str
    checkpoint: Path
    epoch: int | None  # the epoch result.json selected; None: the trial is unfinished
    selected_by: str | None  # "R1 on the val split"

    def title(self, split: str, queries: list[Query]) -> str:
        hits = sum(q.matches[0] for q in queries)
        if self.selected_by is None:
            which = f"{self.checkpoint.name} of an unfinished trial"
        else:
            epoch = "" if self.epoch is None else f" of epoch {self.epoch}"
            which = f"checkpoint{epoch} selected by {self.selected_by}"
        return (
            f"{self.variant}, seed {self.seed} ({dataset_name(self.dataset)}): "
            f"top-{len(queries[0].images)} on the {split} split, {which}; green: same person, "
            f"{hits}/{len(queries)} queries right at rank 1"
        )


def _record(path: Path) -> TrialRecord:
    records = [r for rs in load_dirs(path).values() for r in rs]
    if len(records) != 1:
        raise AnalysisError(f"{path}: not a readable trial directory")
    return records[0]


def shown(trial_dir: Path) -> Shown:
    """What the figure of `trial_dir` shows: the checkpoint the table reports (module doc)."""
    trial = TrialDir(trial_dir)
    rec = _record(Path(trial_dir))
    result = trial.read_result()
    if isinstance(result, dict):
        selection = result.get("selection") or {}
        if not trial.best_ckpt.is_file():
            raise AnalysisError(
                f"{trial.path}: finished, but its selected checkpoint {trial.best_ckpt} is gone "
                "(the table's numbers are that checkpoint's); restore it or retrain the trial"
            )
        path, epoch = trial.best_ckpt, selection.get("epoch")
        epoch = None if epoch is None else int(epoch)
        how = f"{rec.selection_metric or 'R1'} on the {rec.selection_split or 'val'} split"
    else:
        path = next((p for p in (trial.best_ckpt, trial.last_ckpt) if p.is_file()), None)
        if path is None:
            raise AnalysisError(
                f"{trial.path}: no checkpoint (looked for {trial.best_ckpt} and "
                f"{trial.last_ckpt}); is this a trial directory that trained?"
            )
        epoch = how = None
    label = rec.variant or rec.variant_base or trial.trial_id
    return Shown(Path(trial_dir), label, rec.seed, rec.dataset, path, epoch, how)


def pick_trial(path: Path, variant: str | None = None, seed: int | None = None) -> Path:
    """`path` if it is a trial directory; else (a study folder) its finished trial that the
    table reports first, by a rule that reads no test number: the first row (the grid's first
    variant at its first grid point; `variant`: that variant's, by name or row label), on the
    first dataset, the lowest seed (or `seed`)."""
    if (path / CONFIG_FILE).is_file():
        if variant is not None or seed is not None:
            raise AnalysisError(
                f"{path} is one trial: --variant and --seed choose a trial in a study folder"
            )
        return path
    studies = load_dirs(path) if path.is_dir() else {}
    if len(studies) > 1:
        raise AnalysisError(
            f"{path} holds trials of several studies ({', '.join(studies)}): pass one study's "
            "folder, or a trial directory"
        )
    finished = [r for rs in studies.values() for r in rs if r.finished and r.path is not None]
    if not finished:
        raise AnalysisError(f"{path}: not a trial directory, and no finished trial under it")
    if variant is not None:
        names = list(dict.fromkeys(r.variant_base for r in finished))
        finished = [r for r in finished if variant in (r.variant_base, r.variant)]
        if not finished:
            raise AnalysisError(
                f"--variant {variant!r}: no finished trial of it under {path}; variants there: "
                + ", ".join(repr(n) for n in names)
            )
    if seed is not None:
        seeds = sorted({r.seed for r in finished})
        finished = [r for r in finished if r.seed == seed]
        if not finished:
            raise AnalysisError(
                f"--seed {seed}: no finished trial with it under {path}"
                + (f" of {variant!r}" if variant else "")
                + f"; seeds there: {', '.join(map(str, seeds))}"
            )
    drop = dataset_axes(finished)
    rows = row_order(finished, drop)
    first = min(
        finished,
        key=lambda r: (
            rows.index((r.variant_base, r.point(drop))),
            dataset_rank(r.dataset),
            r.seed,
        ),
    )
    return first.path


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
    what = shown(trial_dir)
    device = torch.device("cpu")
    try:
        model, cfg, info = load_for_eval(what.checkpoint, device)
        if what.epoch is not None and info.get("epoch") != what.epoch:
            raise AnalysisError(
                f"{what.checkpoint} is the checkpoint of epoch {info.get('epoch')}, but "
                f"result.json selected epoch {what.epoch}: it is not the checkpoint the tables "
                "report"
            )
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


CAPTION_CHARS = 40  # characters per caption line
CAPTION_PT = 8  # caption font size
CAPTION_INCHES = 3.0  # the caption column: 40 characters of 8 pt (0.6 em each) and a margin
IMAGE_INCHES = 1.0  # a gallery image's column
ROW_INCHES = 2.0  # a row's height, more when its caption needs it
TITLE_PT = 10


def _line_inches(points: float) -> float:
    return points * 1.25 / 72  # matplotlib's line spacing (1.2) and a little air


def figure(queries: list[Query], title: str):
    """The figure (matplotlib): a row per query, the caption then its top-k images framed
    green or red. Captions and title are wrapped, never cut: a row is as tall as its caption
    needs (at least ROW_INCHES), and every part is placed in inches (no tight_layout, which
    squeezes the images to make room for a long caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    k = max(len(q.images) for q in queries)
    width = CAPTION_INCHES + IMAGE_INCHES * k
    captions = [textwrap.fill(q.caption, CAPTION_CHARS) for q in queries]
    heights = [
        max(ROW_INCHES, _line_inches(CAPTION_PT) * (c.count("\n") + 1) + 0.4) for c in captions
    ]
    title = textwrap.fill(title, int(width * 72 / (TITLE_PT * 0.6)))
    top = 0.4 + _line_inches(TITLE_PT) * title.count("\n")
    height = sum(heights) + top
    fig = plt.figure(figsize=(width, height))

    def box(x: float, y: float, w: float, h: float) -> list[float]:  # inches -> figure
        return [x / width, y / height, w / width, h / height]

    fig.suptitle(title, fontsize=TITLE_PT, y=1.0 - 0.1 / height, va="top")
    y = height - top
    for q, caption, h in zip(queries, captions, heights, strict=True):
        y -= h
        ax = fig.add_axes(box(0.1, y, CAPTION_INCHES - 0.2, h))
        ax.axis("off")
        ax.text(0.0, 0.5, caption, va="center", ha="left", fontsize=CAPTION_PT)
        for j, (image, match) in enumerate(zip(q.images, q.matches, strict=True)):
            x = CAPTION_INCHES + j * IMAGE_INCHES
            ax = fig.add_axes(box(x + 0.05, y + 0.1, IMAGE_INCHES - 0.1, h - 0.4))
            ax.set_xticks([])
            ax.set_yticks([])
            with Image.open(image) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
            for spine in ax.spines.values():
                spine.set_edgecolor(GREEN if match else RED)
                spine.set_linewidth(4)
            ax.set_title(str(j + 1), fontsize=7)
    return fig


def draw(queries: list[Query], title: str, path: Path) -> Path:
    """`figure` as one PNG at `path`."""
    import matplotlib.pyplot as plt

    from bilma.fileio import atomic_write_bytes

    fig = figure(queries, title)
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
