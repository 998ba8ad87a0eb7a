"""Reading checkpoints: a real one round-trips; a bad file gets one line saying what it is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bilma.config import load_config
from bilma.data.records import DataError
from bilma.model.bilma import build_model
from bilma.training import checkpoint

TINY = [
    "model.name=tiny",
    "model.embed_dim=64",
    "model.cross_depth=1",
    "model.cross_heads=4",
    "mim.depth=1",
    "data.image_size=[128,64]",
    "data.text_length=48",
]


class Foreign:
    """An object another program might have pickled into its checkpoint."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    model = build_model(cfg, vocab_size=100, eot_id=99, num_ids=5)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    checkpoint.save(path, model, cfg, epoch=3)
    return path


def bad_load(path: Path) -> str:
    with pytest.raises(DataError) as e:
        checkpoint.load(path)
    message = str(e.value)
    assert "\n" not in message and "\x1b" not in message, message
    assert "weights_only" not in message  # never torch's advice to load unsafely
    assert message.startswith(f"cannot read checkpoint {path}: not a bilma checkpoint (")
    return message


def test_a_real_checkpoint_round_trips(saved):
    ckpt = checkpoint.load(saved)
    assert ckpt["epoch"] == 3 and ckpt["format"] == checkpoint.FORMAT
    model, cfg, info = checkpoint.load_for_eval(saved, torch.device("cpu"))
    assert info == {"epoch": 3} and cfg.model.embed_dim == 64
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_random_bytes(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(b"\x51\x4d\x9c\x79" + os.urandom(4092))
    assert "(not a PyTorch file: it starts with the bytes 51 4d 9c 79)" in bad_load(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert "(the file is empty)" in bad_load(path)


def test_truncated_checkpoint(saved, tmp_path):
    data = saved.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy
    assert "(a truncated or damaged PyTorch file: copy it again)" in bad_load(path)


def test_checkpoint_holding_python_objects(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": {}, "trainer": Foreign()}, path)
    message = bad_load(path)
    assert "it holds Python objects (" in message and "Foreign) that a safe load refuses" in message


def test_plain_pickle(tmp_path):
    import collections
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": collections.OrderedDict()}, protocol=4))
    assert "(a plain Python pickle, not a file written by torch.save)" in bad_load(path)


def test_a_torch_file_of_another_kind(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(DataError, match="is not a bilma checkpoint \\(no model signature in it\\)"):
        checkpoint.load(path)


def test_a_gpu_checkpoint_loads_on_the_cpu(saved, tmp_path, monkeypatch):
    """Storages recorded as on cuda:0 (what a GPU run writes) load here with map_location."""
    ckpt = checkpoint.load(saved)
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(ckpt, path)
    if not torch.cuda.is_available():  # the file really says cuda: a bare load fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    for where in ("cpu", None, torch.device("cpu")):
        loaded = checkpoint.load(path, map_location=where)
        w = loaded["model"]
        assert all(t.device.type == "cpu" for t in w.values())
        assert all(torch.equal(w[k], ckpt["model"][k]) for k in ckpt["model"])


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda w: w.pop("encoders.mask_token"), "missing encoders.mask_token"),
        (lambda w: w.update(extra=torch.zeros(1)), "unexpected extra"),
        (
            lambda w: w.update({"encoders.mask_token": torch.zeros(3)}),
            "encoders.mask_token [3] instead of [128]",
        ),
        (lambda w: w.update({"encoders.mask_token": "x"}), "not tensors: encoders.mask_token"),
    ],
)
def test_weights_that_do_not_fit_their_own_signature_are_one_line(saved, tmp_path, edit, expected):
    ckpt = torch.load(saved, weights_only=True)
    edit(ckpt["model"])
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        checkpoint.load_for_eval(path, torch.device("cpu"))
    message = str(e.value)
    assert "\n" not in message and expected in message, message
    assert message.startswith(f"{path}: its weights do not fit the model its own signature")


# ----------------------------------------------------------------------------- background saves


def test_a_background_save_holds_the_state_of_its_submit(tmp_path):
    """The host copy is made in the caller's thread: updates after `submit` (the training
    step that goes on) are not in the file, even while it is still being written."""
    from collections import OrderedDict

    weights = OrderedDict(w=torch.arange(6.0), step=torch.tensor(3))
    weights._metadata = {"": {"version": 2}}  # type: ignore[attr-defined]
    state = {"model": weights, "state": {"best": {"epoch": 1}}, "rng": [torch.ones(2)]}
    saver = checkpoint.BackgroundSaver()
    saver.submit([(tmp_path / "a.pt", state)])
    weights["w"].add_(100.0)  # in place, as an optimizer step does
    state["state"]["best"]["epoch"] = 2
    saver.wait()
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert back["model"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert back["state"]["best"]["epoch"] == 1 and back["model"]._metadata == weights._metadata
    assert not list(tmp_path.glob(".*.tmp"))


def test_host_copies_reuse_their_buffers_and_share_shared_parts():
    copy = checkpoint.HostCopy()
    w = torch.randn(4, 3)
    shared = {"w": w}
    first = copy([{"model": shared}, {"model": shared, "extra": torch.zeros(2)}])
    assert first[0]["model"] is first[1]["model"]  # one model in two files: one copy
    second = copy([{"model": {"w": w + 1}}, {"model": {"w": w}, "extra": torch.ones(2)}])
    assert second[0]["model"]["w"].data_ptr() == first[0]["model"]["w"].data_ptr()  # reused
    assert torch.equal(second[0]["model"]["w"], w + 1) and torch.equal(second[1]["model"]["w"], w)
    third = copy([{"model": {"w": torch.zeros(5)}}])  # another shape: a new buffer
    assert third[0]["model"]["w"].shape == (5,)


def test_one_save_in_flight_and_errors_reach_the_caller(tmp_path, monkeypatch, caplog):
    """A second submit waits for the first; a failed background write is raised at the
    next submit or wait (in the caller's thread), then forgotten."""
    import threading

    events = []
    gate = threading.Event()
    real = checkpoint.write

    def write(path, content):
        events.append(("start", path.name))
        if path.name == "a.pt":
            gate.wait(timeout=30)
        if path.name == "bad.pt":
            raise OSError("disk on fire")
        real(path, content)
        events.append(("end", path.name))

    monkeypatch.setattr(checkpoint, "write", write)
    saver = checkpoint.BackgroundSaver()
    saver.submit([(tmp_path / "a.pt", {"x": torch.zeros(1)})])
    assert saver.busy
    threading.Timer(0.2, gate.set).start()
    saver.submit([(tmp_path / "b.pt", {"x": torch.ones(1)})], then=lambda: events.append("then"))
    saver.wait()
    assert events == [
        ("start", "a.pt"),
        ("end", "a.pt"),
        ("start", "b.pt"),
        ("end", "b.pt"),
        "then",
    ]
    saver.submit([(tmp_path / "bad.pt", {"x": torch.ones(1)})])
    with pytest.raises(OSError, match="disk on fire"):
        saver.submit([(tmp_path / "c.pt", {"x": torch.ones(1)})])
    assert not (tmp_path / "c.pt").exists()  # the failed one is reported before the next
    saver.wait()  # nothing in flight, the error was handed over once
    saver.submit([(tmp_path / "bad.pt", {"x": torch.ones(1)})])
    saver.close()  # on the way out of another error: logged, not raised
    assert "the last checkpoint save failed too: disk on fire" in caplog.text
