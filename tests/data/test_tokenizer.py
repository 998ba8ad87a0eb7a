"""Tokenizer: trained tiny BPE and the CLIP folder format with IRRA's mask slot."""

import json

import numpy as np
import pytest

from bilma.data.records import DataError
from bilma.data.tokenizer import (
    CLIP_VOCAB_SIZE,
    EOT,
    MASK,
    SOT,
    encode_cached,
    load_tokenizer,
    train_tokenizer,
)

CAPTIONS = [
    "a man in a red coat and black trousers with white sneakers",
    "a woman wearing a grey tee and a blue skirt, she carries a backpack",
    "the pedestrian has long brown hair and wears green shorts",
] * 50


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = train_tokenizer(CAPTIONS, tmp_path_factory.mktemp("tok"), vocab_size=400)
    return load_tokenizer(folder)


def test_tiny_tokenizer_layout(tiny):
    v = tiny.vocab_size
    assert (tiny.mask_id, tiny.sot_id, tiny.eot_id) == (v - 3, v - 2, v - 1)
    ids = tiny.encode(["a man in a red coat"], 12)[0]
    assert ids[0] == tiny.sot_id
    n = int((ids > 0).sum())
    assert ids[n - 1] == tiny.eot_id and (ids[n:] == 0).all()
    assert int(np.argmax(ids)) == n - 1  # CLIP's argmax pooling finds EOT
    assert tiny.decode(ids) == "a man in a red coat"


def test_unseen_characters_never_map_to_eot(tiny):
    ids = tiny.encode(["x q Ünïcode ≥ 5 zebra"], 40)[0]
    body = ids[1 : int((ids > 0).sum()) - 1]
    assert tiny.eot_id not in body.tolist()


def test_truncation_keeps_eot_last(tiny):
    ids = tiny.encode([" ".join(["red"] * 100)], 10)[0]
    assert ids.shape == (10,) and ids[0] == tiny.sot_id and ids[-1] == tiny.eot_id


def _clip_like_folder(tmp_path, tiny_folder):
    """A 49,408-entry vocabulary in CLIP's layout: the last merge makes id 49405."""
    vocab = json.loads((tiny_folder / "vocab.json").read_text())
    merges = (tiny_folder / "merges.txt").read_text().splitlines()[1:]
    for tok in (MASK, SOT, EOT):
        del vocab[tok]
    # pad with unused symbols up to 49405 ids, then one merge whose result takes id 49405
    i = 0
    while len(vocab) < CLIP_VOCAB_SIZE - 3:
        vocab[f"zz{i}"] = len(vocab)
        i += 1
    vocab["jekyll</w>"] = CLIP_VOCAB_SIZE - 3
    merges.append("jekyl l</w>")
    vocab["jekyl"] = vocab.pop("zz0")
    vocab[SOT], vocab[EOT] = CLIP_VOCAB_SIZE - 2, CLIP_VOCAB_SIZE - 1
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges))
    return folder


def test_clip_folder_gets_irra_mask(tmp_path, tiny):
    tiny_folder = train_tokenizer(CAPTIONS, tmp_path / "t", vocab_size=400)
    folder = _clip_like_folder(tmp_path, tiny_folder)
    tok = load_tokenizer(folder)
    assert tok.vocab_size == CLIP_VOCAB_SIZE
    assert (tok.mask_id, tok.sot_id, tok.eot_id) == (49405, 49406, 49407)
    assert tok.decode(tok.encode(["a red coat"], 16)[0]) == "a red coat"


def test_missing_files_and_foreign_vocab(tmp_path):
    with pytest.raises(DataError, match=r"vocab\.json: not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(DataError, match="no <\\|mask\\|> token"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(DataError, match=r"vocab\.json: malformed JSON at line 1"):
        load_tokenizer(tmp_path)


def test_encode_cached_reuses_file(tmp_path, tiny):
    caps = CAPTIONS[:3]
    a = encode_cached(tiny, caps, 16, tmp_path)
    files = list(tmp_path.glob("tokens-*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0]), a)
    b = encode_cached(tiny, caps, 16, tmp_path)
    np.testing.assert_array_equal(a, b)
    encode_cached(tiny, caps, 20, tmp_path)  # another length is another entry
    assert len(list(tmp_path.glob("tokens-*.npy"))) == 2


def test_token_ids_follow_the_merges_not_the_trainers_hash_order(tmp_path):
    """The BPE trainer numbers the symbols it starts from in hash-map order (another order in
    every process, so the same captions gave other ids); ours are numbered in sorted order,
    then each merge's product in merge order, then the rest of the byte alphabet and the
    specials: the ids are a function of the merges."""
    folder = train_tokenizer(CAPTIONS, tmp_path / "t", vocab_size=400)
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = (folder / "merges.txt").read_text().splitlines()[1:]
    made = ["".join(m.split(" ")) for m in merges]
    n_start = next(i for i, tok in enumerate(vocab) if tok == made[0])
    start = list(vocab)[:n_start]
    assert start == sorted(start) and len(start) > 20
    assert [vocab[t] for t in made if t not in start] == list(
        range(n_start, n_start + len({t for t in made if t not in start}))
    )
    assert sorted(vocab.values()) == list(range(len(vocab)))  # dense ids
    assert list(vocab)[-3:] == [MASK, SOT, EOT]
