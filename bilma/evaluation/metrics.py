"""Retrieval metrics for text-to-image person re-identification (IRRA's `rank`).

Queries are captions, the gallery is images, a gallery item is a positive for a query when it
has the query's person id (no camera filtering). Per query the gallery is ranked by similarity,
descending; with `r_1 < r_2 < ... < r_n` the 1-based ranks of the query's n positives:

- Rank-k: the query has a positive in the top k, i.e. `r_1 <= k`;
- AP = sum_k precision@k * match_k / n = (1/n) * sum_m m / r_m;
- INP = n / r_n (rank of the last positive).

`retrieval_metrics` returns R1, R5, R10, mAP and mINP in percent, as plain Python floats.

Ties: the ranking is that of a *stable* descending sort (`torch.sort(descending=True,
stable=True)`): gallery items with equal similarity keep gallery order, so the earlier gallery
item ranks first. IRRA uses an unstable `argsort`, whose order among ties is unspecified; with
continuous scores ties do not occur and both agree.

Implementation: a full sort of every row is the costly part (0.7-2 s for 6,156 x 3,074 on
two cores), and is not needed: only the ranks of the positives matter, and the rank of a
positive j is `1 + #{k: s_k > s_j} + #{k < j: s_k == s_j}`, which is one comparison pass over
the row per positive. Queries are processed `chunk` at a time (rows of the similarity are
sliced, converted and compared per chunk, so the extra memory is O(chunk x gallery)); a chunk
whose queries have more than `_COUNT_MAX_POSITIVES` positives falls back to a stable sort.

A busy machine: on CPU the work is a few hundred passes of a few milliseconds, and with
several torch threads each pass is a parallel region that waits for its slowest thread; with
other processes on the cores a waiting thread loses its time slice, and the same call took
10-50x longer with 2 threads than with 1 (BENCHMARKS.md). So the counting compares all the
positives of a tile in one pass (fewer, larger operations), and the CPU work runs with
`threads` torch threads (1 by default), restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

METRIC_KEYS: tuple[str, ...] = ("R1", "R5", "R10", "mAP", "mINP")
_TOPK: tuple[int, ...] = (1, 5, 10)

# Above this many positives per query (in a chunk) one stable sort per row is cheaper than one
# comparison pass per positive (a sort costs roughly 60-80 passes on CPU).
_COUNT_MAX_POSITIVES = 32
# Rows compared at once in the counting path: small enough that a block of the similarity
# stays in cache while all its positives are compared with it (a cache tiling) ...
_TILE_ROWS = 128
# ... and at most this many comparisons (bytes of the boolean [rows, positives, gallery]).
_TILE_ELEMENTS = 1 << 22


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside, restored after (None: unchanged)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _as_pids(pids: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """Person ids as a 1-D int64 tensor on `device`, checked against the expected length."""
    t = pids if isinstance(pids, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(pids))
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    t = t.reshape(-1).to(device=device, dtype=torch.int64)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, the similarity has {n}")
    return t


def _positive_index(
    query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every query: where its positives start in `order`, and how many there are.

    `order` is the gallery sorted by pid, stably, so the positives of one pid are a contiguous
    run of `order`, in gallery order.
    """
    order = torch.sort(gallery_pids, stable=True).indices
    uniq, counts = torch.unique_consecutive(gallery_pids[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    where = torch.searchsorted(uniq, query_pids).clamp_(max=uniq.numel() - 1)
    found = uniq[where] == query_pids
    n_pos = torch.where(found, counts[where], torch.zeros_like(counts[where]))
    return order, starts[where], n_pos


def _chunk_rows(similarity: Any, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows [start, stop) of the similarity as a float32 (float64 stays float64) tensor."""
    if isinstance(similarity, torch.Tensor):
        rows = similarity[start:stop]
    else:
        rows = torch.from_numpy(np.ascontiguousarray(similarity[start:stop]))
    dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    return rows.to(device=device, dtype=dtype)


def _ranks_by_count(sim: torch.Tensor, pos_idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based ranks of the positives `pos_idx` [c, P] in each row of `sim` [c, G].

    Rank = 1 + #greater + #equal earlier in the gallery (a stable descending sort). Padding
    slots (`valid` False) get rank G + 1. Each tile of rows is compared with all its
    positives at once ([rows, P, G] booleans).
    """
    c, g = sim.shape
    p = pos_idx.shape[1]
    if sim.device.type == "cpu":
        tile_rows = max(1, min(_TILE_ROWS, _TILE_ELEMENTS // (p * g)))
    else:
        tile_rows = c  # GPUs: one tile, fewer syncs
    ranks = torch.empty(pos_idx.shape, dtype=torch.int64, device=sim.device)
    for r0 in range(0, c, tile_rows):
        tile = sim[r0 : r0 + tile_rows]
        pos_tile = pos_idx[r0 : r0 + tile_rows]
        pos_sims = tile.gather(1, pos_tile)
        row, score = tile.unsqueeze(1), pos_sims.unsqueeze(2)  # [r, 1, G], [r, P, 1]
        greater = (row > score).sum(2)
        equal = (row == score).sum(2)  # the positive itself included
        rank = greater + 1
        tied = equal > 1  # another item has the positive's score: rare with real scores
        if bool(tied.any()):
            rr, mm = tied.nonzero(as_tuple=True)
            arange = torch.arange(g, device=sim.device)
            earlier = (tile[rr] == pos_sims[rr, mm, None]) & (arange < pos_tile[rr, mm, None])
            rank[rr, mm] += earlier.sum(1)
        ranks[r0 : r0 + tile_rows] = rank
    return ranks.masked_fill_(~valid, g + 1)


def _ranks_by_sort(sim: torch.Tensor, matches_of: torch.Tensor, p: int) -> torch.Tensor:
    """1-based ranks of the positives via a stable descending sort (many positives).

    `matches_of` [c, G] bool marks the positives of each row; returns [c, p] ascending ranks,
    padded with G + 1.
    """
    c, g = sim.shape
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices
    matches = matches_of.gather(1, order)
    rank = torch.arange(1, g + 1, device=sim.device).expand(c, g)
    rank = torch.where(matches, rank, torch.full_like(rank, g + 1))
    return torch.topk(rank, p, dim=1, largest=False, sorted=True).values


def _metric_sums(
    similarity: torch.Tensor | np.ndarray,
    q_pids: torch.Tensor,
    g_pids: torch.Tensor,
    positives: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    chunk: int,
) -> torch.Tensor:
    """[hits@1, hits@5, hits@10, sum of AP, sum of INP] over all queries, float64;
    `positives` is `_positive_index(q_pids, g_pids)`."""
    device = q_pids.device
    n_query, n_gallery = len(q_pids), len(g_pids)
    order, starts, n_pos = positives
    totals = torch.zeros(len(_TOPK) + 2, dtype=torch.float64, device=device)
    for q0 in range(0, n_query, chunk):
        q1 = min(q0 + chunk, n_query)
        sim = _chunk_rows(similarity, q0, q1, device)
        if bool(torch.isnan(sim).any()):
            raise ValueError(f"similarity has NaN in query rows {q0}..{q1 - 1}")
        n = n_pos[q0:q1]
        p = int(n.max())
        slots = torch.arange(p, device=device)
        valid = slots < n[:, None]
        if p <= _COUNT_MAX_POSITIVES:
            at = (starts[q0:q1, None] + slots).clamp_(max=n_gallery - 1)
            ranks = _ranks_by_count(sim, order[at], valid).sort(dim=1).values
        else:
            ranks = _ranks_by_sort(sim, g_pids[None, :] == q_pids[q0:q1, None], p)
        ranks = ranks.double()
        first = ranks[:, 0]
        last = ranks.masked_fill(~valid, 0).amax(1)
        nd = n.double()
        ap = ((slots + 1).double() / ranks).masked_fill_(~valid, 0).sum(1) / nd
        inp = nd / last
        hits = [(first <= k).double().sum() for k in _TOPK]
        totals += torch.stack([*hits, ap.sum(), inp.sum()])
    return totals


@torch.no_grad()
def retrieval_metrics(
    similarity: torch.Tensor | np.ndarray,
    query_pids: torch.Tensor | np.ndarray,
    gallery_pids: torch.Tensor | np.ndarray,
    chunk: int = 1024,
    threads: int | None = 1,
) -> dict[str, float]:
    """R1, R5, R10, mAP and mINP (percent) of a [queries, gallery] similarity matrix.

    Accepts torch tensors (computed on the similarity's device) or numpy arrays of any float
    dtype; pids of any integer dtype. Ties rank in gallery order (stable sort). Raises
    ValueError if a query has no positive in the gallery or a similarity is NaN. On CPU the
    work runs with `threads` torch threads (None: torch's current setting), see above.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if similarity.ndim != 2:
        raise ValueError(
            f"similarity must be 2-D [queries, gallery], got {tuple(similarity.shape)}"
        )
    if isinstance(similarity, torch.Tensor):
        floating = similarity.dtype.is_floating_point
    else:
        floating = np.issubdtype(similarity.dtype, np.floating)
    if not floating:
        raise TypeError(f"similarity must be floating point, got dtype {similarity.dtype}")
    n_query, n_gallery = (int(s) for s in similarity.shape)
    if n_query == 0 or n_gallery == 0:
        raise ValueError(f"empty similarity {tuple(similarity.shape)}")
    device = similarity.device if isinstance(similarity, torch.Tensor) else torch.device("cpu")

    q_pids = _as_pids(query_pids, n_query, "query_pids", device)
    g_pids = _as_pids(gallery_pids, n_gallery, "gallery_pids", device)
    positives = _positive_index(q_pids, g_pids)
    missing = int((positives[2] == 0).sum())
    if missing:
        raise ValueError(
            f"{missing} of {n_query} queries have no positive (same pid) in the gallery; "
            "every query needs at least one"
        )

    with _torch_threads(threads if device.type == "cpu" else None):
        totals = _metric_sums(similarity, q_pids, g_pids, positives, chunk)
    values = (totals * (100.0 / n_query)).tolist()
    return {key: float(v) for key, v in zip(METRIC_KEYS, values, strict=True)}


def chance_r1(query_pids: Any, gallery_pids: Any) -> float:
    """Rank-1 (percent) of a random ranking: the mean over queries of the share of the gallery
    that is the query's identity. With the same number of images per identity this is
    100 / gallery identities; a gallery of one identity gives 100 (nothing to retrieve)."""
    q = np.asarray(query_pids).reshape(-1)
    g = np.asarray(gallery_pids).reshape(-1)
    if len(q) == 0 or len(g) == 0:
        return float("nan")
    ids, counts = np.unique(g, return_counts=True)
    share = dict(zip(ids.tolist(), (counts / len(g)).tolist(), strict=True))
    return 100.0 * float(np.mean([share.get(p, 0.0) for p in q.tolist()]))


def format_metrics(m: dict[str, float]) -> str:
    """One line, e.g. ``R1 73.38  R5 89.93  R10 93.71  mAP 66.13  mINP 50.24``."""
    keys = [k for k in METRIC_KEYS if k in m] + [k for k in m if k not in METRIC_KEYS]
    return "  ".join(f"{k} {float(m[k]):.2f}" for k in keys)


def metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """An aligned text table: one row per name, one column per metric (2 decimals).

    Columns are the standard metrics first, then any other keys in first-seen order; a metric
    a row lacks prints as ``-``.
    """
    keys = [k for k in METRIC_KEYS if any(k in r for r in rows.values())]
    for r in rows.values():
        keys += [k for k in r if k not in keys]
    name_w = max([len("name")] + [len(str(n)) for n in rows])
    cells = {n: [f"{float(r[k]):.2f}" if k in r else "-" for k in keys] for n, r in rows.items()}
    widths = [max([len(k)] + [len(c[i]) for c in cells.values()]) for i, k in enumerate(keys)]
    header = "  ".join(
        ["name".ljust(name_w)] + [k.rjust(w) for k, w in zip(keys, widths, strict=True)]
    )
    lines = [header, "-" * len(header)]
    for n, c in cells.items():
        lines.append(
            "  ".join([str(n).ljust(name_w)] + [v.rjust(w) for v, w in zip(c, widths, strict=True)])
        )
    return "\n".join(lines)
