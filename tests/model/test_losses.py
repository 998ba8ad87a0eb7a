"""Each loss against a direct, loop-based computation from its formula."""

from __future__ import annotations

import math

import pytest
import torch
from support.reference_losses import old_mim_pixel_loss, old_mlm_loss, old_semmim_loss
from torch import nn

from bilma.model import losses
from bilma.model.losses import id_loss, mim_pixel_loss, mlm_loss, sdm_loss, semmim_loss


def _log_softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def _unit(vec: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in vec))
    return [x / n for x in vec]


def sdm_reference(v: torch.Tensor, t: torch.Tensor, pids: list[int], scale: float) -> float:
    vs = [_unit(r) for r in v.double().tolist()]
    ts = [_unit(r) for r in t.double().tolist()]
    b = len(pids)
    total = 0.0
    for a, c in ((vs, ts), (ts, vs)):  # i2t then t2i
        loss = 0.0
        for i in range(b):
            logits = [scale * sum(x * y for x, y in zip(a[i], c[j], strict=True)) for j in range(b)]
            log_p = _log_softmax_row(logits)
            n_i = sum(pids[i] == pids[k] for k in range(b))
            for j in range(b):
                q = (pids[i] == pids[j]) / n_i
                loss += math.exp(log_p[j]) * (log_p[j] - math.log(q + 1e-8))
        total += loss / b
    return total


def ce_reference(logits: list[float], target: int) -> float:
    return -_log_softmax_row(logits)[target]


@pytest.mark.parametrize("scale", [50.0, 3.0])
def test_sdm_matches_formula_with_repeated_pids(scale):
    torch.manual_seed(0)
    v = torch.randn(6, 5, dtype=torch.float64)
    t = torch.randn(6, 5, dtype=torch.float64) * 3  # normalisation happens inside
    pids = [4, 1, 4, 2, 1, 4]  # several positives per row
    got = sdm_loss(v, t, torch.tensor(pids), logit_scale=scale)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(sdm_reference(v, t, pids, scale), rel=1e-5, abs=1e-5)


def test_sdm_irra_broadcast_equivalence():
    # IRRA divides by labels.sum(dim=1) without keepdim (column-wise); equal because y is
    # symmetric and positives share their count. Replicate IRRA's code literally.
    torch.manual_seed(1)
    v, t = torch.randn(8, 4), torch.randn(8, 4)
    pid = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1])
    labels = (pid.reshape(-1, 1) - pid.reshape(1, -1) == 0).float()
    vn, tn = v / v.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    t2i = 50 * (tn @ vn.t())
    i2t = t2i.t()
    dist = labels / labels.sum(dim=1)
    i2t_l = torch.softmax(i2t, 1) * (torch.log_softmax(i2t, 1) - torch.log(dist + 1e-8))
    t2i_l = torch.softmax(t2i, 1) * (torch.log_softmax(t2i, 1) - torch.log(dist + 1e-8))
    irra = i2t_l.sum(1).mean() + t2i_l.sum(1).mean()
    assert sdm_loss(v, t, pid).item() == pytest.approx(irra.item(), rel=1e-5)


def test_sdm_small_when_aligned_and_grad_flows():
    # text = image features, distinct ids, large scale: p is near one-hot on the diagonal = q
    torch.manual_seed(2)
    v = torch.nn.functional.normalize(torch.randn(4, 64), dim=1)
    feats = v.clone().requires_grad_(True)
    aligned = sdm_loss(feats, feats.detach().clone(), torch.arange(4), logit_scale=50.0)
    shuffled = sdm_loss(feats, v[[1, 2, 3, 0]], torch.arange(4), logit_scale=50.0)
    assert aligned.item() < 1e-3 < shuffled.item()
    scale = torch.tensor(50.0, requires_grad=True)
    loss = sdm_loss(feats, torch.randn(4, 64), torch.tensor([0, 0, 1, 1]), logit_scale=scale)
    loss.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    assert scale.grad is not None


def test_sdm_under_bf16_autocast_is_fp32_math():
    torch.manual_seed(3)
    v, t = torch.randn(8, 16), torch.randn(8, 16)
    pid = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    want = sdm_loss(v, t, pid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sdm_loss(v, t, pid)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got16 = sdm_loss(v.bfloat16(), t.bfloat16(), pid)  # bf16 inputs still give fp32 math
    assert got16.dtype == torch.float32 and torch.isfinite(got16)


def test_id_loss_matches_manual_ce():
    torch.manual_seed(4)
    clf = nn.Linear(5, 3)
    v, t = torch.randn(4, 5), torch.randn(4, 5)
    pids = [0, 2, 1, 2]
    got = id_loss(clf, v, t, torch.tensor(pids))
    with torch.no_grad():
        lv, lt = clf(v).tolist(), clf(t).tolist()
    ce_v = sum(ce_reference(lv[i], pids[i]) for i in range(4)) / 4
    ce_t = sum(ce_reference(lt[i], pids[i]) for i in range(4)) / 4
    assert got.item() == pytest.approx((ce_v + ce_t) / 2, rel=1e-5)
    got.backward()
    assert clf.weight.grad is not None
    # any callable works; under autocast the logits are cast to float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = id_loss(lambda x: clf(x), v, t, torch.tensor(pids))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(got.item(), abs=0.05)


def test_mlm_only_chosen_positions():
    torch.manual_seed(5)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    labels = torch.tensor([[-100, 3, -100, 6], [0, -100, -100, -100]])
    got = mlm_loss(logits, labels)
    chosen = [(0, 1, 3), (0, 3, 6), (1, 0, 0)]
    want = sum(ce_reference(logits[b, pos].tolist(), y) for b, pos, y in chosen) / len(chosen)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # changing logits at ignored positions changes nothing
    other = logits.detach().clone()
    other[labels == -100] = torch.randn(int((labels == -100).sum()), 7) * 10
    assert mlm_loss(other, labels).item() == pytest.approx(got.item(), rel=1e-6)
    got.backward()
    assert logits.grad[labels == -100].abs().sum() == 0
    assert logits.grad[labels != -100].abs().sum() > 0


def test_mlm_none_chosen_is_connected_zero():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mlm_bf16_logits():
    logits = torch.randn(2, 3, 5).bfloat16().requires_grad_(True)
    labels = torch.tensor([[1, -100, 2], [-100, 4, -100]])
    loss = mlm_loss(logits, labels)
    assert loss.dtype == torch.float32
    want = mlm_loss(logits.detach().float(), labels)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def mim_reference(pred, target, mask, norm_pix: bool) -> float:
    b, p, d = pred.shape
    total, count = 0.0, 0
    for i in range(b):
        for j in range(p):
            if not mask[i][j]:
                continue
            x = target[i, j].tolist()
            if norm_pix:
                mean = sum(x) / d
                var = sum((xi - mean) ** 2 for xi in x) / (d - 1)  # unbiased, as in MAE
                x = [(xi - mean) / math.sqrt(var + 1e-6) for xi in x]
            y = pred[i, j].tolist()
            total += sum((yi - xi) ** 2 for yi, xi in zip(y, x, strict=True)) / d
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mim_pixel_matches_formula_and_only_masked_count(norm_pix):
    torch.manual_seed(6)
    pred = torch.randn(2, 5, 12, requires_grad=True)
    target = torch.rand(2, 5, 12) * 4 + 1
    mask = torch.tensor([[True, False, True, False, False], [False, True, True, True, False]])
    got = mim_pixel_loss(pred, target, mask, norm_pix=norm_pix)
    assert got.item() == pytest.approx(mim_reference(pred, target, mask, norm_pix), rel=1e-5)
    # unmasked patches do not count: change them in prediction and target
    pred2, target2 = pred.detach().clone(), target.clone()
    pred2[~mask] += 100
    target2[~mask] -= 50
    assert mim_pixel_loss(pred2, target2, mask, norm_pix).item() == pytest.approx(got.item())
    got.backward()
    assert pred.grad[~mask].abs().sum() == 0 and pred.grad[mask].abs().sum() > 0


def test_mim_pixel_norm_changes_value_and_empty_mask():
    torch.manual_seed(7)
    pred, target = torch.randn(1, 3, 4), torch.rand(1, 3, 4) * 10
    mask = torch.tensor([[True, True, False]])
    assert mim_pixel_loss(pred, target, mask, True).item() != pytest.approx(
        mim_pixel_loss(pred, target, mask, False).item()
    )
    p = pred.clone().requires_grad_(True)
    zero = mim_pixel_loss(p, target, torch.zeros(1, 3, dtype=torch.bool))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def test_semmim_hard_matches_manual_ce():
    torch.manual_seed(8)
    logits = torch.randn(2, 4, 6, requires_grad=True)
    labels = torch.tensor([[0, 5, 2, 2], [1, 3, 4, 0]])
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    got = semmim_loss(logits, labels, mask)
    picked = [(0, 0), (0, 2), (1, 1), (1, 2)]
    want = sum(ce_reference(logits[b, p].tolist(), int(labels[b, p])) for b, p in picked) / 4
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert logits.grad[~mask].abs().sum() == 0


def test_semmim_soft_equals_hard_for_one_hot_and_matches_formula():
    torch.manual_seed(9)
    logits = torch.randn(2, 4, 6)
    labels = torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[True, True, False, True], [False, True, False, False]])
    one_hot = torch.nn.functional.one_hot(labels, 6).float()
    hard = semmim_loss(logits, labels, mask)
    soft = semmim_loss(logits, one_hot, mask)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    # a genuine histogram: -sum_c q_c log p_c averaged over masked patches
    q = torch.rand(2, 4, 6)
    q = q / q.sum(-1, keepdim=True)
    want, n = 0.0, 0
    for b in range(2):
        for p in range(4):
            if mask[b, p]:
                log_p = _log_softmax_row(logits[b, p].tolist())
                want += -sum(qc * lp for qc, lp in zip(q[b, p].tolist(), log_p, strict=True))
                n += 1
    assert semmim_loss(logits, q, mask).item() == pytest.approx(want / n, rel=1e-5)


def test_semmim_ignore_index_empty_and_bf16():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    labels = torch.tensor([[2, -100, 1]])
    mask = torch.tensor([[False, True, True]])
    got = semmim_loss(logits, labels, mask)  # only patch 2 counts
    assert got.item() == pytest.approx(ce_reference(logits[0, 2].tolist(), 1), rel=1e-5)
    zero = semmim_loss(logits, labels, torch.zeros(1, 3, dtype=torch.bool))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = semmim_loss(logits.bfloat16(), labels, mask)
    assert out.dtype == torch.float32


def test_shape_errors():
    with pytest.raises(ValueError):
        sdm_loss(torch.randn(3, 4), torch.randn(2, 4), torch.arange(3))
    with pytest.raises(ValueError):
        mlm_loss(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        mim_pixel_loss(
            torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.ones(1, 2, dtype=torch.bool)
        )
    with pytest.raises(ValueError):
        semmim_loss(torch.randn(1, 3, 4), torch.rand(1, 3, 5), torch.ones(1, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- the sync-free losses


def same_value_and_gradient(new_fn, old_fn, x, *rest):
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    new, old = new_fn(a, *rest), old_fn(b, *rest)
    new.backward()
    old.backward()
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)
    return float(new.detach())


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
def test_sync_free_losses_equal_the_boolean_indexing_ones(share):
    g = torch.Generator().manual_seed(int(share * 10))
    mask = torch.rand(4, 12, generator=g) < share
    # MLM: [B, L, V] logits, labels at the chosen positions
    logits = torch.randn(4, 12, 30, generator=g)
    labels = torch.where(mask, torch.randint(0, 30, (4, 12), generator=g), -100)
    value = same_value_and_gradient(losses.mlm_loss, old_mlm_loss, logits, labels)
    assert (value == 0.0) == (share == 0.0)
    # SemMIM: hard labels with some ignored patches, and soft labels
    hard = torch.randint(0, 20, (4, 12), generator=g)
    hard[:, ::5] = -100
    mim_logits = torch.randn(4, 12, 20, generator=g)
    same_value_and_gradient(losses.semmim_loss, old_semmim_loss, mim_logits, hard, mask)
    soft = torch.softmax(torch.randn(4, 12, 20, generator=g), -1)
    same_value_and_gradient(losses.semmim_loss, old_semmim_loss, mim_logits, soft, mask)
    # pixels, with and without per-patch normalisation
    pred, target = torch.randn(4, 12, 48, generator=g), torch.randn(4, 12, 48, generator=g)
    for norm in (True, False):
        same_value_and_gradient(
            lambda p, t, m, n=norm: losses.mim_pixel_loss(p, t, m, n),
            lambda p, t, m, n=norm: old_mim_pixel_loss(p, t, m, n),
            pred,
            target,
            mask,
        )


def test_the_losses_read_nothing_from_the_device():
    from bilma.training.syncs import SyncCounter

    mask = torch.rand(4, 12) < 0.5
    logits = torch.randn(4, 12, 30, requires_grad=True)
    with SyncCounter() as c:
        losses.mlm_loss(logits, torch.where(mask, 3, -100)).backward()
        losses.semmim_loss(logits[..., :20], torch.randint(0, 20, (4, 12)), mask).backward()
        losses.mim_pixel_loss(logits, torch.randn(4, 12, 30), mask).backward()
    assert c.count == 0
