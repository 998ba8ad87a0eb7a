"""Datasets: MLM masking, deterministic sampling and augmentation, samples, clear errors."""

import numpy as np
import pytest
import torch
from support.tiny import SYNTH_OVERRIDES

from bilma.config import load_config
from bilma.data import datasets
from bilma.data.datasets import IGNORE, EpochSampler, TrainSet, load_data, mask_tokens, root_cause
from bilma.data.records import DataError


@pytest.fixture(scope="module")
def synth_root(synth_small):
    return synth_small


def cfg_for(root, *extra):
    return load_config(
        None,
        [
            f"data.root={root}",
            *SYNTH_OVERRIDES,
            "data.text_length=48",
            "data.num_workers=0",
            *extra,
        ],
    )


def test_mask_tokens_follows_irra():
    rng = np.random.default_rng(0)
    mask_id = 1000
    ids = np.array([1001] + list(range(1, 60)) + [1002] + [0] * 4)
    chosen_total, as_mask = 0, 0
    for _ in range(300):
        masked, labels = mask_tokens(ids, rng, 0.15, mask_id)
        chosen = labels != IGNORE
        # specials (SOT, EOT, pad) are never chosen, labels hold the original ids
        assert not chosen[0] and not chosen[60] and not chosen[61:].any()
        assert (labels[chosen] == ids[chosen]).all()
        assert (masked[~chosen] == ids[~chosen]).all()
        chosen_total += chosen.sum()
        as_mask += (masked[chosen] == mask_id).sum()
    rate = chosen_total / (300 * 59)
    assert 0.13 < rate < 0.17
    assert 0.75 < as_mask / chosen_total < 0.85


def test_mask_tokens_masks_position_one_when_nothing_chosen():
    """IRRA: with nothing chosen, position 1 always becomes the mask (no 80/10/10 draw)."""
    rng = np.random.default_rng(0)
    for seed in range(200):
        ids = np.array([9, 1 + seed % 7, 3, 10, 0])
        masked, labels = mask_tokens(ids, np.random.default_rng(seed), 0.0, 8)
        assert labels.tolist() == [IGNORE, ids[1], IGNORE, IGNORE, IGNORE]
        assert masked.tolist() == [9, 8, 3, 10, 0]
    # A 1-token caption at p = 0.15: nothing chosen 85% of the time, then always the mask;
    # chosen 15%, then the mask 80% of that: 97% in all (the old 80/10/10 fallback gave 80%).
    as_mask = 0
    for _ in range(300):
        masked, labels = mask_tokens(np.array([9, 5, 10, 0]), rng, 0.15, 8)
        assert labels.tolist() == [IGNORE, 5, IGNORE, IGNORE]
        as_mask += masked[1] == 8
    assert as_mask > 270


def test_epoch_sampler_resume_and_shards():
    s = EpochSampler(10, seed=1)
    s.set_epoch(2)
    full = list(s)
    assert sorted(i for i, _ in full) == list(range(10)) and all(e == 2 for _, e in full)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    s.set_epoch(3)
    assert [i for i, _ in s] != [i for i, _ in full]
    a, b = EpochSampler(10, 1, rank=0, world=3), EpochSampler(10, 1, rank=1, world=3)
    assert len(list(a)) == len(list(b)) == 4


def test_train_samples(synth_root):
    cfg = cfg_for(synth_root)
    data = load_data(cfg)
    ts = TrainSet(data, cfg)
    assert len(ts) == 2 * len(data.split("train")[0])  # two captions per image
    ts = TrainSet(data, cfg, uint8=False)  # samples finished here, as the model takes them
    s = ts[(5, 0)]
    assert s["images"].shape == (3, 128, 64) and s["images"].dtype == torch.float32
    assert s["caption_ids"].shape == (48,) and int(s["caption_ids"][0]) == data.tokenizer.sot_id
    assert s["patch_labels"].shape == (8 * 4,) and int(s["patch_labels"].max()) < 20
    assert (s["patch_labels"] > 0).any()  # the figure covers some patches
    chosen = s["mlm_labels"] != IGNORE
    assert chosen.any() and (s["mlm_labels"][chosen] == s["caption_ids"][chosen]).all()
    assert 0 <= int(s["pids"]) < data.num_train_ids
    # augmentation is a function of (seed, epoch, index)
    again = ts[(5, 0)]
    assert torch.equal(s["images"], again["images"]) and torch.equal(s["mlm_ids"], again["mlm_ids"])
    other_epoch = ts[(5, 1)]
    assert not torch.equal(s["mlm_ids"], other_epoch["mlm_ids"]) or not torch.equal(
        s["images"], other_epoch["images"]
    )


def test_workers_ship_uint8_and_the_device_half_gives_the_cpu_samples(synth_root):
    """The default sample is uint8 (image, parse map) plus its erasing box; the batch's
    device half turns it into exactly the sample finished on the CPU (the old float path)."""
    cfg = cfg_for(synth_root, "data.erase=1.0")
    data = load_data(cfg)
    fast, slow = TrainSet(data, cfg), TrainSet(data, cfg, uint8=False)
    keys = [(i, e) for i in (0, 3, 7, 11) for e in (0, 1)]
    raw = [fast[k] for k in keys]
    s = raw[0]
    assert s["images"].dtype == torch.uint8 and s["images"].shape == (3, 128, 64)
    assert s["parse_maps"].dtype == torch.uint8 and s["parse_maps"].shape == (128, 64)
    assert s["erase"].dtype == torch.int32 and "patch_labels" not in s
    assert sum(int(r["erase"][2]) > 0 for r in raw) >= 6  # erase=1.0: most draws fit a box
    batch = torch.utils.data.default_collate(raw)
    done = fast.device_augment()(batch)
    assert "erase" not in done and "parse_maps" not in done
    for b, k in enumerate(keys):
        ref = slow[k]
        assert ref.keys() == done.keys()
        for name in ref:
            assert torch.equal(done[name][b], ref[name]), (k, name)


def test_soft_labels_and_pixel_target(synth_root):
    cfg = cfg_for(synth_root, "mim.label_rule=soft", "mim.labels=ppp7")
    s = TrainSet(load_data(cfg), cfg, uint8=False)[(0, 0)]
    assert s["patch_labels"].shape == (32, 7)
    torch.testing.assert_close(s["patch_labels"].sum(1), torch.ones(32))
    cfg = cfg_for(synth_root, "mim.target=pixel")
    s = TrainSet(load_data(cfg), cfg)[(0, 0)]
    assert "patch_labels" not in s and "parse_maps" not in s


def test_loader_batches(synth_root):
    cfg = cfg_for(synth_root)
    ts = TrainSet(load_data(cfg), cfg)
    loader, sampler = datasets.train_loader(ts, 8, 0)
    sampler.set_epoch(0)
    batch = next(iter(loader))
    assert batch["images"].shape == (8, 3, 128, 64) and batch["pids"].shape == (8,)
    assert batch["images"].dtype == batch["parse_maps"].dtype == torch.uint8


def test_loader_workers_persist_across_epochs_and_evaluations(synth_root):
    cfg = cfg_for(synth_root, "data.num_workers=1")
    data = load_data(cfg)
    loader, sampler = datasets.train_loader(TrainSet(data, cfg), 8, 1)
    gallery = datasets.EvalImages(data, (128, 64), 4, 1)
    try:
        pids = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            it = iter(loader)
            first = next(it)  # a partly used epoch, as with train.max_steps_per_epoch
            pids.append(it._workers[0].pid)
            del it
            assert first["images"].dtype == torch.uint8
            images = [b for b, _ in gallery.loader("test")]
            pids.append(gallery.loader("test")._iterator._workers[0].pid)
        assert pids[0] == pids[2] and pids[1] == pids[3]  # the same worker processes
        assert images[0].dtype == torch.uint8 and sum(len(b) for b in images) == 6
        first_epoch = [i for i, _ in sampler]
        sampler.set_epoch(0)
        assert [i for i, _ in sampler] != first_epoch  # each epoch still has its own order
    finally:
        datasets.shutdown_workers(loader)
        gallery.close()
    assert loader._iterator is None and not gallery._loaders


def test_missing_parse_maps_are_named(synth_root, tmp_path):
    cfg = cfg_for(synth_root, f"data.parsing_root={tmp_path}")
    with pytest.raises(DataError, match=r"have no lip20 parse map .*mim.target=pixel"):
        load_data(cfg)
    assert load_data(cfg_for(synth_root, f"data.parsing_root={tmp_path}", "mim.target=none"))


def test_unreadable_image_in_a_worker_gives_one_line(synth_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    data = load_data(cfg_for(root))
    bad = data.image_dir / data.records[0].image_path
    bad.write_bytes(b"not a jpeg")
    cfg = cfg_for(root, "data.num_workers=1")
    ts = TrainSet(load_data(cfg), cfg)
    loader, sampler = datasets.train_loader(ts, len(ts), 1)
    sampler.shuffle = False
    with pytest.raises(Exception) as e:
        next(iter(loader))
    line = root_cause(e.value)
    assert "\n" not in line and str(bad) in line and "data.skip_bad_images=true" in line
    # with the option, the image is dropped with a warning and loading goes on
    data = load_data(cfg_for(root, "data.skip_bad_images=true"))
    assert data.records[0].image_path != bad.name and len(data.records) == 30 * 2 - 1


def test_synthetic_dataset_of_other_parameters_is_refused(synth_root):
    cfg = load_config(None, [f"data.root={synth_root}", *SYNTH_OVERRIDES, "data.synth_ids=40"])
    with pytest.raises(DataError, match=r"made with ids 30 \(config: 40\); point data.root"):
        datasets.ensure_synthetic(cfg.data)


def test_process_holding_a_live_loader_still_exits(synth_root, tmp_path):
    """Interpreter exit terminates DataLoader workers (SIGTERM); a worker that ignored it
    would hang the process forever (as a pytest run holding a failed loader did)."""
    import os
    import signal
    import subprocess
    import sys

    overrides = [f"data.root={synth_root}", *SYNTH_OVERRIDES, "data.text_length=48"]
    script = (
        "from bilma.config import load_config\n"
        "from bilma.data.datasets import TrainSet, load_data, train_loader\n"
        f"cfg = load_config(None, {overrides!r})\n"
        "ts = TrainSet(load_data(cfg), cfg)\n"
        "loader, sampler = train_loader(ts, 4, 1)\n"
        "it = iter(loader)\n"
        "next(it)\n"
        "KEEP = it  # still referenced at exit, as a kept traceback would\n"
        "print('ok')\n"
    )
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the process and its stuck worker
            pytest.fail("the process did not exit: a DataLoader worker survived SIGTERM")
    assert code == 0 and out.read_text().strip().endswith("ok"), out.read_text()


@pytest.mark.parametrize("world", [1, 2])
def test_train_loader_keeps_the_last_partial_batch_on_request(synth_root, world):
    """train.drop_last=false (IRRA): the last partial batch is trained on and counted as a step."""
    cfg = cfg_for(synth_root, "loss.mim_weight=0", "loss.mlm_weight=0")
    ts = TrainSet(load_data(cfg), cfg)
    n = len(ts)  # 96 pairs
    per_rank = n // world
    keep, sampler = datasets.train_loader(ts, 10, 0, 0, world, drop_last=False)
    sizes = [len(b["pids"]) for b in keep]
    assert sizes == [10] * (per_rank // 10) + [per_rank % 10]
    assert len(sampler) // 10 == len(sizes) == len(keep)  # the trainer's steps per epoch
    assert sorted(i for b in keep for i in b["index"].tolist()) == sorted(i for i, _ in sampler)
    sampler.set_epoch(0, start=10 * (len(sizes) - 1))  # resumed before the last batch
    assert len(sampler) // 10 == 1 and len(list(sampler)) == per_rank % 10
    drop, sampler = datasets.train_loader(ts, 10, 0, 0, world)  # the default: drop it
    assert cfg.train.drop_last and [len(b["pids"]) for b in drop] == [10] * (per_rank // 10)
    assert len(sampler) // 10 == per_rank // 10


def test_the_positive_control_s_labels_are_each_train_identity_s_attributes(synth_root):
    from bilma.data import synth

    data = load_data(cfg_for(synth_root))
    table, classes = datasets.synth_attribute_table(data)
    assert classes == (5, 6, 5, 13)  # shoes; bag, hat, scarf colour or none
    assert table.shape == (data.num_train_ids, 4)
    identities = synth.identities_of(synth_root)
    for r in data.records:
        if r.split == "train":
            ident = identities[r.source_id - 1]
            assert tuple(table[r.pid].tolist()) == synth.attribute_labels(ident)
            names = [
                synth.ATTRIBUTE_CLASSES[k][i]
                for k, i in zip(synth.ATTRIBUTE_CLASSES, table[r.pid], strict=True)
            ]
            assert names[0] == ident.shoe_colour and names[2] == (ident.hat_colour or "none")
