"""The shipped presets load, and the IRRA-parity preset changes exactly IRRA's quirks."""

import pytest
from support.paths import CONFIGS

from bilma.config import flatten, load_config, to_dict


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("[!_]*.yaml")), ids=lambda p: p.name)
def test_presets_load(path):
    load_config(path)


def test_irra_parity_changes_exactly_irras_quirks():
    irra = flatten(to_dict(load_config(CONFIGS / "irra_parity.yaml")))
    ours = flatten(to_dict(load_config(CONFIGS / "cuhk_pedes.yaml")))
    changed = {k: irra[k] for k in irra if irra[k] != ours[k]}
    assert changed == {
        "mlm.masked_caption_for_retrieval": True,
        "mlm.attend_padding": True,
        "loss.mim_weight": 0.0,
        "train.drop_last": False,
        "train.amp": "fp16",
        "eval.select_split": "test",
        "tracking.study": "irra-parity-cuhk-pedes",
        "tracking.variant": "IRRA (parity)",
    }
    # IRRA's recipe, which our defaults already follow
    assert irra["optim.cross_norms_lr"] == "base" and irra["mlm.probability"] == 0.15
    assert irra["optim.eps"] == 1e-3 and irra["optim.lr"] == 1e-5 and irra["train.batch_size"] == 64
