"""retrieval_metrics against a brute-force reference written from METHOD.md's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bilma.evaluation.metrics as metrics_mod
from bilma.evaluation.metrics import METRIC_KEYS, format_metrics, metrics_table, retrieval_metrics


def reference_metrics(similarity, query_pids, gallery_pids) -> dict[str, float]:
    """Per-query Python loop: stable descending order (ties by gallery order), then the
    definitions of Rank-k, AP and INP."""
    sim = np.asarray(similarity, dtype=np.float64)
    q_pids = [int(p) for p in np.asarray(query_pids)]
    g_pids = [int(p) for p in np.asarray(gallery_pids)]
    hits = {1: 0, 5: 0, 10: 0}
    ap_sum = inp_sum = 0.0
    for i, qp in enumerate(q_pids):
        order = sorted(range(len(g_pids)), key=lambda j, i=i: (-sim[i, j], j))
        matches = [g_pids[j] == qp for j in order]
        n_pos = sum(matches)
        for k in hits:
            hits[k] += any(matches[:k])
        ap = 0.0
        found = 0
        last = 0
        for rank, m in enumerate(matches, start=1):
            if m:
                found += 1
                ap += found / rank  # precision@rank * match
                last = rank
        ap_sum += ap / n_pos
        inp_sum += n_pos / last
    n = len(q_pids)
    return {
        "R1": 100 * hits[1] / n,
        "R5": 100 * hits[5] / n,
        "R10": 100 * hits[10] / n,
        "mAP": 100 * ap_sum / n,
        "mINP": 100 * inp_sum / n,
    }


def assert_close(got: dict[str, float], want: dict[str, float], tol: float = 1e-6) -> None:
    assert list(got) == list(METRIC_KEYS)
    for k in METRIC_KEYS:
        assert type(got[k]) is float, k
        assert got[k] == pytest.approx(want[k], abs=tol), (k, got, want)


def random_problem(seed: int, n_query: int = 50, n_gallery: int = 40, n_ids: int = 8, ties=False):
    rng = np.random.default_rng(seed)
    gallery_pids = np.concatenate([np.arange(n_ids), rng.integers(0, n_ids, n_gallery - n_ids)])
    rng.shuffle(gallery_pids)
    query_pids = rng.integers(0, n_ids, n_query)
    if ties:  # few distinct values: many ties, also between a positive and negatives
        sim = rng.integers(0, 4, (n_query, n_gallery)).astype(np.float64) / 4
    else:
        sim = rng.normal(size=(n_query, n_gallery))
        sim += 0.7 * (query_pids[:, None] == gallery_pids[None, :])
    return sim, query_pids, gallery_pids


@pytest.fixture(params=["count", "count-1-row", "sort"])
def path(request, monkeypatch):
    """Run each test through the counting path (small tiles; one-row tiles from the element
    cap) and through the sort fallback."""
    if request.param == "sort":
        monkeypatch.setattr(metrics_mod, "_COUNT_MAX_POSITIVES", 0)
    elif request.param == "count":
        monkeypatch.setattr(metrics_mod, "_TILE_ROWS", 3)
    else:
        monkeypatch.setattr(metrics_mod, "_TILE_ELEMENTS", 1)
    return request.param


@pytest.mark.parametrize("chunk", [1, 7, 1024])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(path, chunk, ties, seed):
    sim, q, g = random_problem(seed, ties=ties)
    assert_close(retrieval_metrics(sim, q, g, chunk=chunk), reference_metrics(sim, q, g))


@pytest.mark.parametrize("np_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("pid_dtype", [np.int16, np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_dtypes_and_containers(path, np_dtype, pid_dtype, kind):
    sim, q, g = random_problem(3)
    sim = sim.astype(np_dtype)  # the reference sees the same rounded (and tied) values
    q, g = q.astype(pid_dtype), g.astype(pid_dtype)
    want = reference_metrics(sim.astype(np.float64), q, g)
    if kind == "torch":
        sim, q, g = torch.from_numpy(sim), torch.from_numpy(q), torch.from_numpy(g)
    assert_close(retrieval_metrics(sim, q, g, chunk=7), want)


def test_bfloat16_torch_and_non_contiguous(path):
    sim, q, g = random_problem(4)
    t = torch.from_numpy(sim).to(torch.bfloat16)
    want = reference_metrics(t.double().numpy(), q, g)
    assert_close(retrieval_metrics(t, torch.from_numpy(q), torch.from_numpy(g), chunk=5), want)
    # a transposed view (non-contiguous) and a numpy array with negative strides
    tt = torch.from_numpy(sim.T.copy()).t()
    assert_close(retrieval_metrics(tt, q, g, chunk=5), reference_metrics(sim, q, g))
    rev = sim[:, ::-1]
    assert_close(retrieval_metrics(rev, q, g[::-1], chunk=5), reference_metrics(rev, q, g[::-1]))


def test_by_hand():
    # gallery pids [1, 2, 1, 3]; queries with pids 1 and 2.
    # query 0 (pid 1): descending order is items 1, 2, 3, 0 -> matches [0, 1, 0, 1];
    #   positives at ranks 2 and 4: R1 no, R5 yes, AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4.
    # query 1 (pid 2): item 1 first -> matches [1, 0, 0, 0]: R1 yes, AP = 1, INP = 1/1.
    # => R1 50, R5 100, R10 100, mAP 75, mINP 75.
    sim = np.array([[0.1, 0.9, 0.8, 0.3], [0.2, 0.7, 0.5, 0.1]])
    got = retrieval_metrics(sim, np.array([1, 2]), np.array([1, 2, 1, 3]))
    assert got == pytest.approx({"R1": 50.0, "R5": 100.0, "R10": 100.0, "mAP": 75.0, "mINP": 75.0})


def test_by_hand_rank_5_and_10():
    # one query, pid 0, gallery of 12 where the only positive is item 7; similarity decreasing
    # with the item index except the positive, put 6th: order 0..4, 7, 5, 6, 8..11.
    # R1 no, R5 no (rank 6), R10 yes; AP = 1/6, INP = 1/6.
    sim = -np.arange(12, dtype=np.float64)
    sim[7] = -4.5
    g = np.ones(12, dtype=np.int64)
    g[7] = 0
    got = retrieval_metrics(sim[None], np.array([0]), g)
    assert got == pytest.approx(
        {"R1": 0.0, "R5": 0.0, "R10": 100.0, "mAP": 100 / 6, "mINP": 100 / 6}
    )


def test_ties_resolve_by_gallery_order(path):
    # all similarities equal: the ranking is the gallery order.
    sim = np.zeros((2, 3), dtype=np.float32)
    q = np.array([1, 2])
    g = np.array([2, 1, 1])
    got = retrieval_metrics(sim, q, g)
    # query pid 1: positives at ranks 2, 3 -> AP (1/2 + 2/3)/2 = 7/12, INP 2/3, R1 no
    # query pid 2: positive at rank 1 -> AP 1, INP 1, R1 yes
    assert got["R1"] == pytest.approx(50.0)
    assert got["mAP"] == pytest.approx(100 * (7 / 12 + 1) / 2)
    assert got["mINP"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    # a tie between the positive and an earlier negative puts the positive second
    sim = np.array([[0.5, 0.5, 0.1]])
    assert retrieval_metrics(sim, [1], [0, 1, 0])["R1"] == 0.0
    assert retrieval_metrics(sim, [0], [0, 1, 1])["R1"] == 100.0
    # -0.0 and +0.0 are equal scores
    sim = np.array([[0.0, -0.0]])
    assert retrieval_metrics(sim, [1], [0, 1])["R1"] == 0.0


def test_many_positives_uses_sort_and_agrees(monkeypatch):
    # more positives than the counting threshold in a chunk -> sort fallback; both agree
    sim, q, g = random_problem(5, n_query=20, n_gallery=60, n_ids=2)
    want = reference_metrics(sim, q, g)
    assert_close(retrieval_metrics(sim, q, g, chunk=6), want)
    monkeypatch.setattr(metrics_mod, "_COUNT_MAX_POSITIVES", 10_000)
    assert_close(retrieval_metrics(sim, q, g, chunk=6), want)


def test_small_gallery_rank_k_beyond_gallery():
    sim = np.array([[0.2, 0.9], [0.3, 0.1]])
    got = retrieval_metrics(sim, [0, 0], [0, 1])
    assert got == pytest.approx({"R1": 50.0, "R5": 100.0, "R10": 100.0, "mAP": 75.0, "mINP": 75.0})


def test_query_without_positive_raises():
    sim = np.zeros((3, 2))
    with pytest.raises(ValueError, match="2 of 3 queries have no positive"):
        retrieval_metrics(sim, [0, 5, 7], [0, 1])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0.0]]), [0], [0, 1])
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(3), [0], [0, 1, 2])
    with pytest.raises(ValueError, match="query_pids"):
        retrieval_metrics(np.zeros((2, 2)), [0], [0, 1])
    with pytest.raises(TypeError, match="integers"):
        retrieval_metrics(np.zeros((1, 2)), [0.0], [0, 1])
    with pytest.raises(TypeError, match="floating"):
        retrieval_metrics(np.zeros((1, 2), dtype=np.int64), [0], [0, 1])
    with pytest.raises(ValueError, match="chunk"):
        retrieval_metrics(np.zeros((1, 2)), [0], [0, 1], chunk=0)


def test_does_not_modify_input_and_ignores_grad():
    sim, q, g = random_problem(6)
    t = torch.from_numpy(sim).requires_grad_(True)
    before = t.detach().clone()
    assert_close(retrieval_metrics(t, q, g), reference_metrics(sim, q, g))
    assert torch.equal(t.detach(), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference():
    sim, q, g = random_problem(7, ties=True)
    got = retrieval_metrics(torch.from_numpy(sim).cuda(), torch.from_numpy(q).cuda(), g, chunk=7)
    assert_close(got, reference_metrics(sim, q, g))


def test_format_and_table():
    m = {"R1": 73.384, "R5": 89.93, "R10": 93.71, "mAP": 66.125, "mINP": 50.24}
    assert format_metrics(m) == "R1 73.38  R5 89.93  R10 93.71  mAP 66.12  mINP 50.24"
    table = metrics_table({"IRRA": m, "BiLMa (SemMIM)": {"R1": 74.03, "mAP": 66.57}})
    lines = table.splitlines()
    assert lines[0].split() == ["name", "R1", "R5", "R10", "mAP", "mINP"]
    assert lines[2].split() == ["IRRA", "73.38", "89.93", "93.71", "66.12", "50.24"]
    assert lines[3].startswith("BiLMa (SemMIM)")
    assert lines[3].split()[-5:] == ["74.03", "-", "-", "66.57", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned


def irra_rank(similarity, q_pids, g_pids, max_rank=10):
    """IRRA's `rank` (utils/metrics.py), copied, with a stable argsort for deterministic ties."""
    indices = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    pred_labels = g_pids[indices]
    matches = pred_labels.eq(q_pids.view(-1, 1))
    all_cmc = matches[:, :max_rank].cumsum(1)
    all_cmc[all_cmc > 1] = 1
    all_cmc = all_cmc.float().mean(0) * 100
    num_rel = matches.sum(1)
    tmp_cmc = matches.cumsum(1)
    inp = [
        tmp_cmc[i][match_row.nonzero()[-1]] / (match_row.nonzero()[-1] + 1.0)
        for i, match_row in enumerate(matches)
    ]
    m_inp = torch.cat(inp).mean() * 100
    tmp_cmc = [tmp_cmc[:, i] / (i + 1.0) for i in range(tmp_cmc.shape[1])]
    tmp_cmc = torch.stack(tmp_cmc, 1) * matches
    ap = tmp_cmc.sum(1) / num_rel
    return all_cmc, ap.mean() * 100, m_inp


def test_agrees_with_irra_rank():
    sim, q, g = random_problem(8, n_query=300, n_gallery=200, n_ids=60, ties=False)
    sim, q, g = torch.from_numpy(sim).float(), torch.from_numpy(q), torch.from_numpy(g)
    cmc, m_ap, m_inp = irra_rank(sim, q, g)
    got = retrieval_metrics(sim, q, g, chunk=64)
    assert got["R1"] == pytest.approx(cmc[0].item(), abs=1e-4)
    assert got["R5"] == pytest.approx(cmc[4].item(), abs=1e-4)
    assert got["R10"] == pytest.approx(cmc[9].item(), abs=1e-4)
    assert got["mAP"] == pytest.approx(m_ap.item(), abs=1e-4)
    assert got["mINP"] == pytest.approx(m_inp.item(), abs=1e-4)


def test_threads_do_not_change_results_and_are_restored():
    sim, q, g = random_problem(3, n_query=300, n_gallery=120, n_ids=30)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        results = [retrieval_metrics(sim, q, g, threads=t) for t in (1, 2, None)]
        assert results[0] == results[1] == results[2]
        assert_close(results[0], reference_metrics(sim, q, g))
        assert torch.get_num_threads() == 2
        bad = sim.copy()
        bad[250, 3] = np.nan
        with pytest.raises(ValueError, match="NaN in query rows"):
            retrieval_metrics(bad, q, g, chunk=64, threads=1)
        assert torch.get_num_threads() == 2  # restored after an error too
        with pytest.raises(ValueError, match="threads must be >= 1"):
            retrieval_metrics(sim, q, g, threads=0)
    finally:
        torch.set_num_threads(before)


def test_chance_r1_is_the_share_of_the_gallery_of_each_query():
    from bilma.evaluation.metrics import chance_r1

    # 4 identities x 2 images: 100 / 4
    assert chance_r1([0, 1, 2, 3], [0, 0, 1, 1, 2, 2, 3, 3]) == pytest.approx(25.0)
    # unbalanced gallery: query of id 0 (3 of 4 images) and of id 1 (1 of 4)
    assert chance_r1([0, 1], [0, 0, 0, 1]) == pytest.approx(50.0)
    assert chance_r1([0, 0], [0, 0, 0, 1]) == pytest.approx(75.0)
    # against a brute-force random ranking
    rng = np.random.default_rng(0)
    gallery = rng.integers(0, 7, size=40)
    queries = rng.integers(0, 7, size=25)
    hits = [gallery[rng.integers(0, len(gallery))] == q for _ in range(4000) for q in queries]
    assert chance_r1(queries, gallery) == pytest.approx(100 * np.mean(hits), abs=1.0)
