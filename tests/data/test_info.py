"""Tests for `bilma data-info` (bilma.data.info)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from support.data_fixtures import make_cuhk, make_icfg, make_rstpreid

from bilma.data.info import add_data_info_args, main_data_info, run_data_info
from bilma.data.records import DataError


def test_json_cuhk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_data_info("cuhk-pedes", make_cuhk(tmp_path), as_json=True) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {
        "train": {"ids": 3, "images": 4, "captions": 7},
        "val": {"ids": 2, "images": 2, "captions": 4},
        "test": {"ids": 3, "images": 3, "captions": 5},
    }
    assert list(json.loads(out)) == ["train", "val", "test"]
    assert out.count("\n") == 1  # only the JSON object


def test_json_icfg_leaves_out_val(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_icfg(tmp_path, filename="ICFG_PEDES.json")
    assert main_data_info("icfg-pedes", root, as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == {
        "train": {"ids": 3, "images": 4, "captions": 4},
        "test": {"ids": 2, "images": 3, "captions": 3},
    }


def test_json_rstpreid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_data_info("rstpreid", str(make_rstpreid(tmp_path)), as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == {
        "train": {"ids": 3, "images": 4, "captions": 8},
        "val": {"ids": 1, "images": 1, "captions": 2},
        "test": {"ids": 2, "images": 2, "captions": 4},
    }


def test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_cuhk(tmp_path)
    assert main_data_info("cuhk-pedes", root, as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "reid_raw.json" in lines[0]
    table = [line for line in lines[1:] if not set(line) <= {"-", " "}]
    assert [line.split() for line in table] == [
        ["split", "ids", "images", "captions"],
        ["train", "3", "4", "7"],
        ["val", "2", "2", "4"],
        ["test", "3", "3", "5"],
        ["total", "8", "9", "16"],
    ]
    # Aligned: every row of the table has the same width.
    assert len({len(line) for line in lines[1:]}) == 1


def test_cli_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bilma")
    sub = parser.add_subparsers(dest="command")
    add_data_info_args(sub.add_parser("data-info"))
    root = make_rstpreid(tmp_path)
    args = parser.parse_args(["data-info", "--dataset", "rstpreid", "--root", str(root), "--json"])
    assert args.root == root and args.json is True
    assert run_data_info(args) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"train", "val", "test"}

    args = parser.parse_args(["data-info", "--dataset", "synth", "--root", str(root)])
    assert args.json is False
    with pytest.raises(SystemExit):
        parser.parse_args(["data-info", "--dataset", "market", "--root", str(root)])


def test_bad_input_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root"):
        main_data_info("cuhk-pedes", tmp_path, as_json=True)
