"""Retrieval on look-alikes against ordinary identities (synthetic data with look-alike groups).

A synthetic dataset made with `data.synth_lookalike = k` lists its groups in its marker: k
identities equal in every described attribute but one local one. Here the text-to-image
metrics of a split are computed separately for the captions of group members (look-alike
queries) and of the other identities (ordinary queries), each against the whole gallery, and
for look-alike queries the share of Rank-1 mistakes that land on a group-mate: how much a
model confuses people who differ only in their shoes, bag, hat or scarf. Within-group Rank-1
(`group_R1`) ranks each look-alike query against its own group's images only: chance is one
in the group's size, and only the local difference can lift it.

`python -m bilma eval-lookalike --checkpoint CKPT [--split test]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bilma.config import Config
from bilma.data.records import DataError
from bilma.evaluation.metrics import retrieval_metrics


def _groups(root: str | Path) -> list[dict]:
    """The marker's look-alike groups: [{"ids": [...], "attribute": "hat", "split": ...}]."""
    from bilma.data.synth import SYNTH_MARKER

    marker = Path(root) / SYNTH_MARKER
    try:
        params = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DataError(f"{marker}: not a synthetic dataset's marker") from None
    groups = params.get("lookalike_groups")
    if not groups:
        raise DataError(
            f"{root} has no look-alike groups; generate the dataset with data.synth_lookalike=2 "
            "(configs/synth_finetune.yaml does) in a new data.root"
        )
    return groups


def lookalike_groups(root: str | Path) -> dict[int, int]:
    """pid -> group number for every member of a look-alike group of a synthetic dataset."""
    return {int(pid): n for n, g in enumerate(_groups(root)) for pid in g["ids"]}


def group_parts(root: str | Path) -> list[str]:
    """Group number -> the local part its members differ in (shoes, bag, hat or scarf)."""
    return [g["attribute"] for g in _groups(root)]


def query_outcomes(
    sim: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    group_of: dict[int, int],
) -> dict[str, torch.Tensor]:
    """Per look-alike query (rows of `sim` whose pid is in a group), bool tensors: `hit` (Rank-1
    right against the whole gallery), `twin` (Rank-1 wrong, on a group-mate), `group_hit`
    (Rank-1 right when ranking the query's own group's images only), and `group`, the
    query's group number. Pooling splits is concatenating these."""
    qp, gp = query_pids.cpu(), gallery_pids.cpu()
    group_q = torch.tensor([group_of.get(int(p), -1) for p in qp.tolist()])
    group_g = torch.tensor([group_of.get(int(p), -1) for p in gp.tolist()])
    member = group_q >= 0
    s = sim.float().cpu()[member]
    q, gq = qp[member], group_q[member]
    top = gp[s.argmax(dim=1)]
    same = group_g[None, :] == gq[:, None]  # [queries, gallery]: the query's group's images
    top_in_group = gp[s.masked_fill(~same, float("-inf")).argmax(dim=1)]
    return {
        "hit": top == q,
        "twin": (top != q) & (group_g[s.argmax(dim=1)] == gq),
        "group_hit": top_in_group == q,
        "group": gq,
    }


def metrics_by_group(
    sim: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    group_of: dict[int, int],
) -> dict[str, dict[str, float]]:
    """{"look-alike": ..., "ordinary": ..., "all": ...} metrics of a [queries, gallery]
    similarity; "look-alike" also has `twin_errors`: percent of its Rank-1 mistakes whose
    top image shows a member of the query's own group."""
    qp, gp = query_pids.cpu(), gallery_pids.cpu()
    member = torch.tensor([int(p) in group_of for p in qp.tolist()], dtype=torch.bool)
    out = {"all": retrieval_metrics(sim, qp, gp)}
    for name, rows in (("look-alike", member), ("ordinary", ~member)):
        if bool(rows.any()):
            out[name] = retrieval_metrics(sim[rows.to(sim.device)], qp[rows], gp)
    if bool(member.any()):
        o = query_outcomes(sim, qp, gp, group_of)
        n_wrong = int((~o["hit"]).sum())
        share = 100.0 * int(o["twin"].sum()) / n_wrong if n_wrong else 0.0
        out["look-alike"]["twin_errors"] = share
        out["look-alike"]["group_R1"] = 100.0 * float(o["group_hit"].float().mean())
    return out


def flat_group_metrics(by_group: dict[str, dict[str, float]]) -> dict[str, float]:
    """`metrics_by_group` output -> the result.json keys of `bilma.runs.trial_dir.GROUP_METRICS`."""
    out = {}
    for kind, key in (("look-alike", "lookalike"), ("ordinary", "ordinary")):
        if kind in by_group:
            out[f"{key}_R1"] = by_group[kind]["R1"]
            out[f"{key}_mAP"] = by_group[kind]["mAP"]
    for key in ("twin_errors", "group_R1"):
        if key in by_group.get("look-alike", {}):
            out[key] = by_group["look-alike"][key]
    return out


def groups_of_config(cfg: Config) -> dict[int, int] | None:
    """The look-alike groups of cfg's dataset, or None when it has none (any real dataset)."""
    if cfg.data.dataset != "synth" or not cfg.data.synth_lookalike:
        return None
    return lookalike_groups(cfg.data.root)
