"""Metrics on look-alike against ordinary queries, and `python -m bilma eval-lookalike`."""

from __future__ import annotations

import pytest
import torch

from bilma.data.records import DataError
from bilma.evaluation.lookalike import lookalike_groups, metrics_by_group


def test_metrics_by_group_by_hand() -> None:
    # Identities 1 and 2 form a group; 3 is ordinary. One image each, one caption each.
    sim = torch.tensor(
        [
            [0.5, 0.9, 0.1],  # caption of 1: its twin 2 ranks first (a twin error)
            [0.2, 0.8, 0.3],  # caption of 2: right
            [0.1, 0.2, 0.7],  # caption of 3: right
        ]
    )
    pids = torch.tensor([1, 2, 3])
    out = metrics_by_group(sim, pids, pids, {1: 0, 2: 0})
    assert out["look-alike"]["R1"] == pytest.approx(50.0)
    assert out["look-alike"]["twin_errors"] == pytest.approx(100.0)
    assert out["ordinary"]["R1"] == pytest.approx(100.0)
    assert out["all"]["R1"] == pytest.approx(200 / 3)
    # A mistake on an ordinary identity is not a twin error.
    sim[0] = torch.tensor([0.5, 0.1, 0.9])
    assert metrics_by_group(sim, pids, pids, {1: 0, 2: 0})["look-alike"]["twin_errors"] == 0.0


def test_eval_lookalike_command(tmp_path, capsys) -> None:
    from support.tiny import tiny_overrides

    from bilma.__main__ import main
    from bilma.config import load_config
    from bilma.data.datasets import load_data
    from bilma.model.bilma import build_model
    from bilma.training.checkpoint import save

    root = tmp_path / "la"
    over = tiny_overrides(root, tmp_path / "runs", "data.synth_lookalike=2")
    over += ["data.synth_ids=40", "data.synth_lookalike_share=1.0", "data.synth_seed=3"]
    cfg = load_config(None, over)
    data = load_data(cfg)
    groups = lookalike_groups(root)
    test_ids = {r.pid for r in data.records if r.split == "test"}
    assert test_ids <= set(groups)  # share 1.0: every test identity has a twin
    model = build_model(cfg, data.tokenizer.vocab_size, data.tokenizer.eot_id, data.num_train_ids)
    save(tmp_path / "m.pt", model, cfg, epoch=1)
    assert main(["eval-lookalike", "--checkpoint", str(tmp_path / "m.pt"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "look-alike" in text and "twin_errors" in text and "all" in text

    plain = load_config(None, tiny_overrides(tmp_path / "plain", tmp_path / "runs"))
    load_data(plain)
    with pytest.raises(DataError, match="no look-alike groups"):
        lookalike_groups(tmp_path / "plain")


def test_trained_trial_records_lookalike_metrics(tmp_path) -> None:
    """A trial on a look-alike dataset adds GROUP_METRICS to result.json; its overall R1 is the
    query-weighted mean of the look-alike and the ordinary R1."""
    from support.tiny import tiny_overrides

    from bilma.config import load_config
    from bilma.data.datasets import TextSet, load_data
    from bilma.runs.trial_dir import GROUP_METRICS, RESULT_METRICS
    from bilma.training.trainer import train

    over = tiny_overrides(tmp_path / "la", tmp_path / "runs", "data.synth_lookalike=2")
    over += ["data.synth_ids=40", "data.synth_lookalike_share=0.5", "train.epochs=1"]
    cfg = load_config(None, over)
    result = train(cfg)
    m = result["metrics"]
    assert set(m) == set(RESULT_METRICS) | set(GROUP_METRICS)
    groups = lookalike_groups(cfg.data.root)
    pids = TextSet(load_data(cfg), "test").pids.tolist()
    n_la = sum(p in groups for p in pids)
    assert 0 < n_la < len(pids)  # both kinds of query in the test split
    mixed = (n_la * m["lookalike_R1"] + (len(pids) - n_la) * m["ordinary_R1"]) / len(pids)
    assert m["R1"] == pytest.approx(mixed, abs=1e-4)
    assert 0.0 <= m["twin_errors"] <= 100.0

    plain = train(load_config(None, tiny_overrides(tmp_path / "p", tmp_path / "runs")))
    assert set(plain["metrics"]) == set(RESULT_METRICS)  # no groups, no extra keys


def test_within_group_rank1_and_twin_errors_by_hand():
    """Two groups {1, 2} and {3, 4} and an ordinary identity 5; one image each. Query 1's
    best image overall is 5's (a non-twin mistake) but within its group it is right; query 2
    picks its twin 1 (a twin error, wrong within the group too); query 3 is right; query 5
    is ordinary and not counted."""
    import torch

    from bilma.evaluation.lookalike import metrics_by_group, query_outcomes

    gallery = torch.tensor([1, 2, 3, 4, 5])
    queries = torch.tensor([1, 2, 3, 5])
    sim = torch.tensor(
        [
            [0.8, 0.1, 0.0, 0.0, 0.9],
            [0.7, 0.6, 0.0, 0.0, 0.1],
            [0.0, 0.0, 0.9, 0.2, 0.1],
            [0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    group_of = {1: 0, 2: 0, 3: 1, 4: 1}
    o = query_outcomes(sim, queries, gallery, group_of)
    assert o["hit"].tolist() == [False, False, True]
    assert o["twin"].tolist() == [False, True, False]
    assert o["group_hit"].tolist() == [True, False, True]
    by = metrics_by_group(sim, queries, gallery, group_of)
    assert by["look-alike"]["group_R1"] == pytest.approx(200 / 3)
    assert by["look-alike"]["twin_errors"] == pytest.approx(50.0)  # 1 of 2 mistakes
