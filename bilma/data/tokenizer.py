"""Caption tokenizer: CLIP's BPE with IRRA's `<|mask|>`, loaded from a local folder.

One loading path serves both settings:
- the real one: the folder of a downloaded CLIP model (`vocab.json`, `merges.txt`, 49,408
  entries). IRRA takes the last BPE slot for `<|mask|>` (id 49405): the last merge and the
  token it made are dropped so the vocabulary stays 49,408 (SOT 49406, EOT 49407).
- the tiny one: a small BPE trained with `tokenizers` on the synthetic captions and saved in
  the same folder format, with `<|mask|>`, `<|startoftext|>`, `<|endoftext|>` as its last ids.

Encoded captions follow IRRA: `[SOT] tokens [EOT]` truncated to `length` keeping EOT last,
padded with 0. EOT is the largest id, so `argmax(ids)` finds it (CLIP's pooling rule).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bilma.config import Config
from bilma.data.records import DataError
from bilma.fileio import atomic_numpy_save, atomic_write_text

log = logging.getLogger(__name__)

MASK, SOT, EOT = "<|mask|>", "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
PAD_ID = 0


class CaptionTokenizer:
    """Encodes captions to fixed-length id arrays, IRRA style."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], source: str):
        from transformers import CLIPTokenizer

        self.source = source
        self._hf = CLIPTokenizer(vocab=vocab, merges=merges)
        self._backend = self._hf.backend_tokenizer
        self.vocab_size = len(vocab)
        self.mask_id = vocab[MASK]
        self.sot_id = vocab[SOT]
        self.eot_id = vocab[EOT]
        if self.eot_id != self.vocab_size - 1:
            raise DataError(f"{source}: {EOT} must be the last id so argmax pooling finds it")
        digest = hashlib.sha256()
        digest.update(json.dumps(vocab, sort_keys=True).encode())
        digest.update("\n".join(" ".join(m) for m in merges).encode())
        self.fingerprint = digest.hexdigest()[:12]

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab={self.vocab_size}, source={self.source!r})"

    def special_ids(self) -> tuple[int, ...]:
        """Ids that MLM never chooses (pad, mask, SOT, EOT)."""
        return (PAD_ID, self.mask_id, self.sot_id, self.eot_id)

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of `text` without SOT/EOT."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode(self, texts: Sequence[str], length: int) -> np.ndarray:
        """[N, length] int32: SOT, tokens, EOT (kept last on truncation), zeros."""
        out = np.full((len(texts), length), PAD_ID, dtype=np.int32)
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        for i, enc in enumerate(encodings):
            ids = enc.ids[: length - 2]
            out[i, 0] = self.sot_id
            out[i, 1 : 1 + len(ids)] = ids
            out[i, 1 + len(ids)] = self.eot_id
        return out

    def decode(self, ids: Sequence[int]) -> str:
        keep = [int(i) for i in ids if int(i) not in (PAD_ID, self.sot_id, self.eot_id)]
        return self._hf.decode(keep)


def _read_folder(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    for f in (vocab_file, merges_file):
        if not f.exists():
            raise DataError(
                f"{f}: not found; a tokenizer folder needs vocab.json and merges.txt (the folder "
                "of a downloaded CLIP model, e.g. openai/clip-vit-base-patch16, or one made by "
                "`python -m bilma synth`)"
            )
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{vocab_file}: malformed JSON at line {e.lineno}: {e.msg}") from None
    merges: list[tuple[str, str]] = []
    for n, line in enumerate(merges_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{merges_file}: line {n} is not a pair of symbols: {line!r}")
        merges.append((parts[0], parts[1]))
    return vocab, merges


def tokenizer_folder(cfg: Config) -> Path:
    """data.tokenizer, else the CLIP weights folder, else the synthetic dataset's own."""
    if cfg.data.tokenizer:
        return Path(cfg.data.tokenizer)
    if cfg.model.pretrained:
        return Path(cfg.model.pretrained)
    if cfg.data.dataset == "synth":
        return Path(cfg.data.root) / "tokenizer"
    raise DataError(
        f"no tokenizer for {cfg.data.dataset}: set model.pretrained to a local CLIP folder "
        "(it holds vocab.json and merges.txt) or data.tokenizer to such a folder"
    )


def load_tokenizer(folder: str | Path) -> CaptionTokenizer:
    """Load from a folder with `vocab.json` and `merges.txt`, adding IRRA's mask if needed."""
    folder = Path(folder)
    vocab, merges = _read_folder(folder)
    if MASK not in vocab:
        if len(vocab) != CLIP_VOCAB_SIZE or vocab.get(EOT) != CLIP_VOCAB_SIZE - 1:
            raise DataError(
                f"{folder}: vocabulary has no {MASK} token and is not CLIP's 49,408-entry BPE; "
                "use a CLIP model folder or a tokenizer made by `python -m bilma synth`"
            )
        # IRRA: the last merge's token (id 49405) gives its slot to <|mask|>.
        last = "".join(merges[-1])
        if vocab.get(last) != CLIP_VOCAB_SIZE - 3:
            raise DataError(f"{folder}: last merge {merges[-1]} does not make id 49405")
        merges = merges[:-1]
        del vocab[last]
        vocab[MASK] = CLIP_VOCAB_SIZE - 3
    return CaptionTokenizer(vocab, merges, str(folder))


def train_tokenizer(captions: Sequence[str], out: str | Path, vocab_size: int = 1024) -> Path:
    """Train a small CLIP-style BPE on `captions` and save it as vocab.json + merges.txt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # Reuse CLIP's exact normalisation and pre-tokenisation so the trained merges are valid
    # for CLIPTokenizer at load time.
    template = CLIPTokenizer().backend_tokenizer
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = template.normalizer
    tok.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # The trainer numbers the symbols it starts from in hash-map order, which changes from run
    # to run (the merges do not): the same captions gave other token ids, so the same seed
    # trained another model. Number them in sorted order, then each merge's product in merge
    # order: one tokenizer for one caption set.
    made = ["".join(m) for m in merges]
    start = sorted(set(model["vocab"]) - set(made))
    vocab: dict[str, int] = {}
    for sym in (*start, *made):
        vocab.setdefault(sym, len(vocab))
    # Like CLIP, every byte exists alone and as a word end, so no input maps to the unknown
    # token (which would be EOT, and break argmax pooling).
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        for sym in (ch, ch + "</w>"):
            vocab.setdefault(sym, len(vocab))
    for special in (MASK, SOT, EOT):  # CLIP's order: mask, then SOT, then EOT last
        vocab[special] = len(vocab)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges)
    )
    atomic_write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    return out


def encode_cached(
    tokenizer: CaptionTokenizer, captions: Sequence[str], length: int, cache_dir: str | Path | None
) -> np.ndarray:
    """`tokenizer.encode` memoised on disk by (tokenizer, captions, length)."""
    if cache_dir is None:
        return tokenizer.encode(captions, length)
    digest = hashlib.sha256(f"{tokenizer.fingerprint}:{length}".encode())
    for c in captions:
        digest.update(c.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:16]}.npy"
    if path.exists():
        try:
            arr = np.load(path)
            if arr.shape == (len(captions), length):
                return arr
        except (OSError, ValueError):
            log.warning("ignoring unreadable token cache %s", path)
    arr = tokenizer.encode(captions, length)
    try:
        atomic_numpy_save(path, arr)
    except OSError as e:  # a read-only dataset folder only costs the cache
        log.warning("could not write token cache %s: %s", path, e)
    return arr
