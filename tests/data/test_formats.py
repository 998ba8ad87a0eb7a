"""Tests for the benchmark annotation readers in bilma.data.formats."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.data_fixtures import (
    cuhk_entries,
    icfg_entries,
    make_cuhk,
    make_icfg,
    make_rstpreid,
    rstpreid_entries,
    write_jpeg,
    write_json,
)

from bilma.data.formats import (
    ALL_DATASETS,
    DATASETS,
    annotation_file,
    check_images,
    dataset_stats,
    image_dir,
    read_annotations,
    split_records,
    validate_image,
)
from bilma.data.records import DataError, Record


def _one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


# --- reading each format -------------------------------------------------------------------


def test_dataset_names() -> None:
    assert DATASETS == ("cuhk-pedes", "icfg-pedes", "rstpreid")
    assert set(ALL_DATASETS) == {*DATASETS, "synth"}


def test_cuhk_records(tmp_path: Path) -> None:
    root = make_cuhk(tmp_path)
    records = read_annotations("cuhk-pedes", root)
    assert all(isinstance(r, Record) for r in records)
    # File order is preserved.
    assert [r.source_id for r in records] == [7, 3, 8, 7, 101, 102, 201, 202, 203]
    assert [r.image_path for r in records] == [e["file_path"] for e in cuhk_entries()]
    # Train ids 3, 7, 8 -> 0, 1, 2 by sorted source id; val/test keep the source id.
    assert [r.pid for r in records] == [1, 0, 2, 1, 101, 102, 201, 202, 203]
    assert [r.split for r in records] == ["train"] * 4 + ["val"] * 2 + ["test"] * 3
    first = records[0]
    assert first.captions == ("A person 7 wearing item 0.", "A person 7 wearing item 1.")
    assert isinstance(first.captions, tuple)
    # image_path is relative to image_dir.
    assert image_dir("cuhk-pedes", root) == root / "imgs"
    assert all((image_dir("cuhk-pedes", root) / r.image_path).is_file() for r in records)


def test_cuhk_accepts_str_root(tmp_path: Path) -> None:
    root = make_cuhk(tmp_path)
    assert read_annotations("cuhk-pedes", str(root)) == read_annotations("cuhk-pedes", root)


def test_synth_reads_like_cuhk(tmp_path: Path) -> None:
    root = make_cuhk(tmp_path, name="synth")
    assert annotation_file("synth", root) == root / "reid_raw.json"
    assert image_dir("synth", root) == root / "imgs"
    assert read_annotations("synth", root) == read_annotations("cuhk-pedes", root)


def test_icfg_train_test_only(tmp_path: Path) -> None:
    root = make_icfg(tmp_path)
    records = read_annotations("icfg-pedes", root)
    assert [r.pid for r in records] == [2, 0, 0, 1, 27, 28, 28]
    assert {r.split for r in records} == {"train", "test"}
    assert split_records(records, "val") == []
    assert set(dataset_stats(records)) == {"train", "test"}
    assert records[0].captions == ("The man 8 walks.",)
    assert image_dir("icfg-pedes", root) == root / "imgs"


@pytest.mark.parametrize("filename", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_either_filename(tmp_path: Path, filename: str) -> None:
    root = make_icfg(tmp_path, filename=filename)
    assert annotation_file("icfg-pedes", root) == root / filename
    assert len(read_annotations("icfg-pedes", root)) == len(icfg_entries())


def test_icfg_prefers_dash_filename(tmp_path: Path) -> None:
    root = make_icfg(tmp_path, filename="ICFG-PEDES.json")
    write_json(root / "ICFG_PEDES.json", icfg_entries()[:1])
    assert annotation_file("icfg-pedes", root) == root / "ICFG-PEDES.json"
    assert len(read_annotations("icfg-pedes", root)) == len(icfg_entries())


def test_icfg_rejects_val_split(tmp_path: Path) -> None:
    entries = icfg_entries()
    entries[4]["split"] = "val"
    root = make_icfg(tmp_path, entries)
    with pytest.raises(DataError) as err:
        read_annotations("icfg-pedes", root)
    msg = _one_line(str(err.value))
    assert "ICFG-PEDES.json" in msg and "entry 4" in msg and "'val'" in msg
    assert "train, test" in msg


def test_rstpreid_img_path_key(tmp_path: Path) -> None:
    root = make_rstpreid(tmp_path)
    assert annotation_file("rstpreid", root) == root / "data_captions.json"
    records = read_annotations("rstpreid", root)
    assert [r.image_path for r in records] == [e["img_path"] for e in rstpreid_entries()]
    assert [r.pid for r in records] == [0, 1, 2, 2, 3700, 3900, 3901]
    assert all(len(r.captions) == 2 for r in records)
    assert records[0].captions == ("Woman 3 in red.", "She carries a bag 3.")
    assert {r.split for r in records} == {"train", "val", "test"}
    assert all((image_dir("rstpreid", root) / r.image_path).is_file() for r in records)


def test_rstpreid_rejects_file_path_key(tmp_path: Path) -> None:
    entries = cuhk_entries()  # file_path instead of img_path
    root = make_rstpreid(tmp_path, entries, images=False)
    with pytest.raises(DataError) as err:
        read_annotations("rstpreid", root)
    msg = _one_line(str(err.value))
    assert "data_captions.json" in msg and "'img_path'" in msg and "entry 0" in msg


def test_train_ids_contiguous_equal_id_minus_one(tmp_path: Path) -> None:
    entries = cuhk_entries()
    for e, new_id in zip(entries[:4], (2, 1, 3, 2), strict=True):
        e["id"] = new_id
    records = read_annotations("cuhk-pedes", make_cuhk(tmp_path, entries))
    train = split_records(records, "train")
    assert [r.pid for r in train] == [r.source_id - 1 for r in train]


# --- splits and stats ----------------------------------------------------------------------


def test_split_records(tmp_path: Path) -> None:
    records = read_annotations("cuhk-pedes", make_cuhk(tmp_path))
    assert [r.source_id for r in split_records(records, "train")] == [7, 3, 8, 7]
    assert [r.source_id for r in split_records(records, "val")] == [101, 102]
    assert [r.source_id for r in split_records(records, "test")] == [201, 202, 203]
    with pytest.raises(DataError, match="unknown split"):
        split_records(records, "dev")


def test_dataset_stats(tmp_path: Path) -> None:
    records = read_annotations("cuhk-pedes", make_cuhk(tmp_path))
    assert dataset_stats(records) == {
        "train": {"ids": 3, "images": 4, "captions": 7},
        "val": {"ids": 2, "images": 2, "captions": 4},
        "test": {"ids": 3, "images": 3, "captions": 5},
    }
    assert list(dataset_stats(records)) == ["train", "val", "test"]
    assert dataset_stats([]) == {}


def test_dataset_stats_rstpreid(tmp_path: Path) -> None:
    records = read_annotations("rstpreid", make_rstpreid(tmp_path))
    assert dataset_stats(records) == {
        "train": {"ids": 3, "images": 4, "captions": 8},
        "val": {"ids": 1, "images": 1, "captions": 2},
        "test": {"ids": 2, "images": 2, "captions": 4},
    }


# --- bad input -----------------------------------------------------------------------------


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_annotations("market1501", tmp_path)
    msg = _one_line(str(err.value))
    assert "market1501" in msg and "cuhk-pedes" in msg


@pytest.mark.parametrize(
    ("dataset", "names"),
    [
        ("cuhk-pedes", ["reid_raw.json"]),
        ("synth", ["reid_raw.json"]),
        ("icfg-pedes", ["ICFG-PEDES.json", "ICFG_PEDES.json"]),
        ("rstpreid", ["data_captions.json"]),
    ],
)
def test_missing_annotation_file(tmp_path: Path, dataset: str, names: list[str]) -> None:
    with pytest.raises(DataError) as err:
        read_annotations(dataset, tmp_path)
    msg = _one_line(str(err.value))
    for name in names:
        assert str(tmp_path / name) in msg
    assert "--root" in msg and "data.root" in msg and str(tmp_path) in msg


def test_missing_root_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        annotation_file("cuhk-pedes", tmp_path / "nope")
    msg = _one_line(str(err.value))
    assert "does not exist" in msg and "data.root" in msg


def test_malformed_json(tmp_path: Path) -> None:
    root = tmp_path / "cuhk"
    root.mkdir()
    (root / "reid_raw.json").write_text('[\n  {"id": 1,\n   "split": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_annotations("cuhk-pedes", root)
    msg = _one_line(str(err.value))
    assert "reid_raw.json" in msg and "malformed JSON" in msg
    assert "line 3" in msg and "column 13" in msg


def test_top_level_not_a_list(tmp_path: Path) -> None:
    root = make_rstpreid(tmp_path, {"annotations": rstpreid_entries()}, images=False)  # type: ignore[arg-type]
    with pytest.raises(DataError) as err:
        read_annotations("rstpreid", root)
    msg = _one_line(str(err.value))
    assert "data_captions.json" in msg and "list" in msg and "dict" in msg


def test_entry_not_an_object(tmp_path: Path) -> None:
    entries: list = cuhk_entries()
    entries[2] = ["not", "a", "dict"]
    with pytest.raises(DataError) as err:
        read_annotations("cuhk-pedes", make_cuhk(tmp_path, entries, images=False))
    msg = _one_line(str(err.value))
    assert "reid_raw.json" in msg and "entry 2" in msg


@pytest.mark.parametrize("key", ["id", "file_path", "captions", "split"])
def test_missing_key(tmp_path: Path, key: str) -> None:
    entries = cuhk_entries()
    del entries[5][key]
    with pytest.raises(DataError) as err:
        read_annotations("cuhk-pedes", make_cuhk(tmp_path, entries, images=False))
    msg = _one_line(str(err.value))
    assert "reid_raw.json" in msg and "entry 5" in msg and f"missing key '{key}'" in msg
    if key != "id":
        assert "id=102" in msg
    if key != "file_path":
        assert "CUHK03/102_1.jpg" in msg


def test_processed_tokens_not_required(tmp_path: Path) -> None:
    entries = cuhk_entries()
    for e in entries:
        del e["processed_tokens"]
    assert len(read_annotations("cuhk-pedes", make_cuhk(tmp_path, entries))) == len(entries)


@pytest.mark.parametrize(
    ("captions", "expected"),
    [
        ([], "'captions' is empty"),
        (["fine", "   "], "empty caption at position 1"),
        ([""], "empty caption at position 0"),
        ("a single string", "list of strings"),
        (["ok", 3], "list of strings"),
    ],
)
def test_bad_captions(tmp_path: Path, captions: object, expected: str) -> None:
    entries = rstpreid_entries()
    entries[1]["captions"] = captions
    with pytest.raises(DataError) as err:
        read_annotations("rstpreid", make_rstpreid(tmp_path, entries, images=False))
    msg = _one_line(str(err.value))
    assert "data_captions.json" in msg and "entry 1" in msg and "id=7" in msg
    assert "0007_c2_0001.jpg" in msg and "captions" in msg and expected in msg


@pytest.mark.parametrize("split", ["Train", "dev", "", None])
def test_unknown_split(tmp_path: Path, split: object) -> None:
    entries = cuhk_entries()
    entries[0]["split"] = split
    with pytest.raises(DataError) as err:
        read_annotations("cuhk-pedes", make_cuhk(tmp_path, entries, images=False))
    msg = _one_line(str(err.value))
    assert "reid_raw.json" in msg and "entry 0" in msg and "'split'" in msg
    assert repr(split) in msg and "train, val, test" in msg


@pytest.mark.parametrize("bad_id", ["7", 7.0, None, True, [7]])
def test_non_integer_id(tmp_path: Path, bad_id: object) -> None:
    entries = icfg_entries()
    entries[3]["id"] = bad_id
    root = make_icfg(tmp_path, entries, filename="ICFG_PEDES.json", images=False)
    with pytest.raises(DataError) as err:
        read_annotations("icfg-pedes", root)
    msg = _one_line(str(err.value))
    assert "ICFG_PEDES.json" in msg and "entry 3" in msg and "'id'" in msg
    assert "integer" in msg and "train/0007/0007_001.jpg" in msg


def test_bad_image_path_value(tmp_path: Path) -> None:
    entries = cuhk_entries()
    entries[1]["file_path"] = ""
    with pytest.raises(DataError) as err:
        read_annotations("cuhk-pedes", make_cuhk(tmp_path, entries, images=False))
    msg = _one_line(str(err.value))
    assert "entry 1" in msg and "'file_path'" in msg and "non-empty string" in msg


# --- image checks --------------------------------------------------------------------------


def test_check_images_all_present(tmp_path: Path) -> None:
    root = make_cuhk(tmp_path)
    records = read_annotations("cuhk-pedes", root)
    assert check_images(records, image_dir("cuhk-pedes", root), skip_missing=False) == records


def _remove_images(root: Path, paths: list[str]) -> None:
    for p in paths:
        (root / "imgs" / p).unlink()


def test_check_images_missing_raises(tmp_path: Path) -> None:
    root = make_cuhk(tmp_path)
    records = read_annotations("cuhk-pedes", root)
    gone = [r.image_path for r in records[:7]]
    _remove_images(root, gone)
    with pytest.raises(DataError) as err:
        check_images(records, image_dir("cuhk-pedes", root), skip_missing=False)
    msg = _one_line(str(err.value))
    assert "7 of 9 images" in msg and str(root / "imgs") in msg
    assert "data.skip_bad_images=true to drop them with a warning" in msg
    # The first five in file order (id 7's first image is listed once), then "...".
    shown = sorted((p for p in set(gone) if p in msg), key=msg.index)
    assert shown == list(dict.fromkeys(gone))[:5]
    assert msg.count(".jpg") == 5 and ", ...;" in msg


def test_check_images_skip_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_rstpreid(tmp_path)
    records = read_annotations("rstpreid", root)
    gone = [records[1].image_path, records[5].image_path]
    _remove_images(root, gone)
    with caplog.at_level(logging.WARNING, logger="bilma.data.formats"):
        kept = check_images(records, image_dir("rstpreid", root), skip_missing=True)
    assert kept == [r for i, r in enumerate(records) if i not in (1, 5)]
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "2" in text and all(p in text for p in gone)


def test_check_images_all_missing_raises_even_with_skip(tmp_path: Path) -> None:
    root = make_icfg(tmp_path, images=False)
    records = read_annotations("icfg-pedes", root)
    with pytest.raises(DataError) as err:
        check_images(records, image_dir("icfg-pedes", root), skip_missing=True)
    msg = _one_line(str(err.value))
    assert "none of the 7 images" in msg and "data.root" in msg


def test_check_images_empty() -> None:
    assert check_images([], "/nonexistent", skip_missing=False) == []


def test_validate_image_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.jpg"
    write_jpeg(path)
    validate_image(path)


def test_validate_image_truncated_jpeg(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "imgs" / "trunc.jpg"
    path.parent.mkdir()
    Image.effect_noise((64, 128), 60).convert("RGB").save(path, format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        validate_image(path)
    msg = _one_line(str(err.value))
    assert f"cannot read image {path}" in msg
    assert "re-download it or set data.skip_bad_images=true" in msg


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_validate_image_unreadable(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        validate_image(path)
    msg = _one_line(str(err.value))
    assert str(path) in msg and "data.skip_bad_images=true" in msg


# --- an image listed twice ----------------------------------------------------------------


def test_image_listed_twice_names_file_image_and_both_entries(tmp_path: Path) -> None:
    entries = cuhk_entries()
    entries.append({**entries[1], "id": 201, "split": "test"})  # CUHK01/0003001.jpg again
    root = make_cuhk(tmp_path, entries)
    with pytest.raises(DataError) as e:
        read_annotations("cuhk-pedes", root)
    assert _one_line(str(e.value)) == (
        f"{root / 'reid_raw.json'}: image 'CUHK01/0003001.jpg' is listed twice: entry 1 "
        "(id=3, split=train) and entry 9 (id=201, split=test); keep one entry (with both "
        "entries' captions) and remove the other"
    )


def test_image_listed_twice_under_another_spelling(tmp_path: Path) -> None:
    entries = rstpreid_entries()
    entries.append({**entries[0], "img_path": "./0003_c1_0001.jpg"})
    root = make_rstpreid(tmp_path, entries)
    with pytest.raises(DataError, match=r"image './0003_c1_0001.jpg' is listed twice: entry 0"):
        read_annotations("rstpreid", root)
