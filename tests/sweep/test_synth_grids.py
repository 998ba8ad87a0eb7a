"""The laptop study's grids: the ablation on synthetic look-alikes and pretrained vs scratch."""

from __future__ import annotations

from bilma.sweep.expand import expand, load_grid


def test_synth_ablation_expands_to_15_trials() -> None:
    trials = expand(load_grid("synth_ablation"))
    assert len(trials) == 15 and len({t.trial_id for t in trials}) == 15
    first = [t.config for t in trials[::3]]
    assert [t.variant for t in trials[::3]] == [
        "SDM+ID",
        "+MLM (IRRA)",
        "+MIM pixel",
        "+SemMIM LIP-20 (BiLMa)",
        "+SemMIM PPP-7",
    ]
    assert [(c.loss.mlm_weight, c.loss.mim_weight) for c in first] == [
        (0.0, 0.0),
        (1.0, 0.0),
        (1.0, 1.0),
        (1.0, 1.0),
        (1.0, 1.0),
    ]
    assert [c.mim.target for c in first[2:]] == ["pixel", "semantic", "semantic"]
    assert [c.mim.labels for c in first[3:]] == ["lip20", "ppp7"]
    assert sorted(t.seed for t in trials[:3]) == [0, 1, 2]
    for c in first:
        assert c.model.pretrained == "data/clip-synth-tiny"
        assert (c.data.synth_lookalike, c.data.image_size) == (2, [192, 64])


def test_synth_pretrained_compares_with_scratch_on_the_same_budget() -> None:
    trials = expand(load_grid("synth_pretrained"))
    assert len(trials) == 6
    pre, scratch = trials[0].config, trials[3].config
    assert pre.model.pretrained == "data/clip-synth-tiny" and scratch.model.pretrained is None
    assert pre.train.epochs == scratch.train.epochs and pre.data == scratch.data
    assert pre.loss.mlm_weight == pre.loss.mim_weight == 0 == scratch.loss.mim_weight


def test_synth_knobs_changes_one_knob_of_the_ablations_bilma() -> None:
    knobs = expand(load_grid("synth_knobs"))
    ablation = expand(load_grid("synth_ablation"))
    bilma = next(t.config for t in ablation if t.variant.startswith("+SemMIM LIP-20"))
    assert len(knobs) == 4 and not {t.trial_id for t in knobs} & {t.trial_id for t in ablation}
    weights, mask = knobs[0].config, knobs[2].config
    assert (weights.loss.mlm_weight, weights.loss.mim_weight, weights.mim.mask_ratio) == (3, 3, 0.5)
    assert (mask.loss.mlm_weight, mask.loss.mim_weight, mask.mim.mask_ratio) == (1, 1, 0.75)
    assert weights.mim == bilma.mim and mask.loss == bilma.loss  # one knob each
    assert sorted(t.seed for t in knobs) == [0, 0, 1, 1]
