"""Placing a parser's classes in the project's label sets: data files, splits, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.parse_fixtures import ATR18_NAMES

from bilma.data.parsing import LABEL_SETS
from bilma.data.synth import LABEL_NAMES
from bilma.parse.cli import LABEL_SET_NAMES
from bilma.parse.labelmaps import (
    MAPS_DIR,
    LabelMapError,
    build_label_map,
    exact_label_set,
    id2label_names,
    normalise,
)

ATR = dict(enumerate(ATR18_NAMES))


def test_cli_names_are_the_label_sets():
    assert tuple(LABEL_SETS) == LABEL_SET_NAMES


def test_normalise_spellings():
    assert normalise("Upper-clothes") == normalise("upper_clothes") == "upper-clothes"
    assert normalise(" Left  shoe ") == "left-shoe"


def test_mattmdjaga_labels_are_atr18_exactly():
    m = build_label_map(ATR, "atr18")
    assert m.exact == "atr18" and m.identity
    pred = np.arange(18, dtype=np.uint8).reshape(3, 6)
    assert np.array_equal(m.apply(pred), pred)


def test_atr18_to_lip20_by_name():
    m = build_label_map(ATR, "lip20")
    lip = LABEL_SETS["lip20"].classes
    for i, name in enumerate(LABEL_SETS["atr18"].classes):
        expected = {"belt": "pants", "bag": "background"}.get(name, name)
        assert lip[m.lut[i]] == expected, name


def test_atr18_to_ppp7_cuts_limbs_at_the_middle_of_their_span():
    m = build_label_map(ATR, "ppp7")
    atr = {n: i for i, n in enumerate(LABEL_SETS["atr18"].classes)}
    ppp = {n: i for i, n in enumerate(LABEL_SETS["ppp7"].classes)}
    pred = np.zeros((10, 4), dtype=np.uint8)
    pred[0:4, 0:2] = atr["upper-clothes"]  # shoulder at row 0
    pred[1:8, 2] = atr["left-arm"]  # span rows 0..7: cut at 3.5
    pred[0:2, 3] = atr["face"]
    out = m.apply(pred)
    assert (out[0:4, 0:2] == ppp["torso"]).all()
    assert (out[1:4, 2] == ppp["upper-arms"]).all()
    assert (out[4:8, 2] == ppp["lower-arms"]).all()
    assert (out[0:2, 3] == ppp["head"]).all()
    assert (out[8:, :] == 0).all() and out[0, 2] == 0


def test_lip_parser_is_refused_for_atr18_with_its_unplaced_classes():
    with pytest.raises(LabelMapError) as e:
        build_label_map(dict(enumerate(LABEL_NAMES["lip20"])), "atr18", "parser X")
    msg = str(e.value)
    assert msg.startswith("parser X: 3 of its 20 classes cannot be placed in atr18")
    assert "3:glove, 8:socks, 10:jumpsuits" in msg and "atr18.json" in msg


def test_unknown_parser_lists_every_unknown_class():
    names = {0: "background", 1: "upper_torso", 2: "left_sleeve", 3: "Hair"}
    with pytest.raises(LabelMapError, match=r"2 of its 4 .* 1:upper-torso, 2:left-sleeve\."):
        build_label_map(names, "ppp7")


def test_id2label_must_be_contiguous():
    with pytest.raises(LabelMapError, match="0..n-1"):
        id2label_names({0: "background", 2: "hat"})
    assert exact_label_set(id2label_names({"0": "Background", "1": "Head"})) is None


def test_map_files_name_real_classes():
    """A typo in a data file would silently refuse (or misplace) a class: check every name."""
    known = {n for names in LABEL_NAMES.values() for n in names}
    for path in sorted(MAPS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        target = LABEL_SETS[data["target"]].classes
        assert path.stem == data["target"]
        for src, dst in data["classes"].items():
            assert src in known and dst in target, (path.name, src, dst)
        for src, rule in data["split"].items():
            assert src in known and {rule["upper"], rule["lower"]} <= set(target)
            assert set(rule["span"]) <= known and 0 < rule["at"] < 1, (path.name, src)


@pytest.mark.parametrize("source", ["atr18", "lip20"])
def test_every_source_set_reaches_ppp7(source):
    m = build_label_map(dict(enumerate(LABEL_NAMES[source])), "ppp7")
    assert len(m.splits) == 5 and m.lut.max() < 7
