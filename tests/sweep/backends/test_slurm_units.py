"""sweeps/slurm.py without a cluster: splitting at MaxArraySize, SLURM's array ids."""

from __future__ import annotations

import pytest

from bilma.sweep.backends.slurm import _expand, split


@pytest.mark.parametrize(
    ("n", "size", "pieces"),
    [(4, 64, [4]), (64, 64, [64]), (65, 64, [64, 1]), (100, 64, [64, 36]), (130, 64, [64, 64, 2])],
)
def test_split_at_max_array_size(n, size, pieces):
    items = list(range(n))
    out = split(items, size)
    assert [len(p) for p in out] == pieces
    assert [x for p in out for x in p] == items  # order kept, nothing lost or repeated


def test_expand_array_ids():
    assert _expand("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert _expand("12_[7]") == ["12_7"]
    assert _expand("12_3") == ["12_3"]
    assert _expand("40") == ["40"]
