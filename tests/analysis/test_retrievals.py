"""Which trial and checkpoint a retrieval figure shows, and how it is laid out, on trial
folders and queries made here (no training: test_show_retrievals runs a real sweep's)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml
from PIL import Image

from bilma.analysis.records import AnalysisError
from bilma.analysis.retrievals import Query, figure, pick_trial, shown
from bilma.runs.launch import Launch, write_launch


def make_trial(study: Path, tid: str, variant: str, index: int, seed: int, point, r1: float):
    """A finished trial folder: config, launch.json, status, result.json (test R1 `r1`)."""
    path = study / tid
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        yaml.safe_dump({"train": {"seed": seed}, "data": {"dataset": "synth"}})
    )
    label = variant + "".join(f" [{k.rsplit('.', 1)[-1]}={v}]" for k, v in point.items())
    write_launch(path, Launch(study.name, "g.yaml", label, variant, index, point, seed))
    # started in the order of the calls: the tables' launch order
    started = len(list(study.iterdir()))
    (path / "status.json").write_text(json.dumps({"state": "done", "started": started}))
    result = {
        "study": study.name,
        "variant": label,
        "variant_base": variant,
        "grid_point": point,
        "seed": seed,
        "dataset": "synth",
        "metrics": {"R1": r1, "R5": 90.0, "R10": 95.0, "mAP": 60.0, "mINP": 40.0},
        "selection": {"split": "val", "metric": "R1", "epoch": 2, "value": 50.0},
    }
    (path / "result.json").write_text(json.dumps(result))
    return path


@pytest.fixture
def study(tmp_path) -> Path:
    """IRRA (the grid's first variant) with the lowest test R1; BiLMa at two points with the
    highest, launched first and in a seed order that is not sorted."""
    s = tmp_path / "abl"
    make_trial(s, "t1", "BiLMa", 1, 2, {"loss.id_weight": 1.0}, 80.0)
    make_trial(s, "t2", "BiLMa", 1, 1, {"loss.id_weight": 0.5}, 99.0)  # best on test
    make_trial(s, "t3", "BiLMa", 1, 1, {"loss.id_weight": 1.0}, 70.0)
    make_trial(s, "t4", "IRRA", 0, 3, {"loss.id_weight": 1.0}, 40.0)
    make_trial(s, "t5", "IRRA", 0, 1, {"loss.id_weight": 1.0}, 30.0)
    make_trial(s, "t6", "IRRA", 0, 2, {"loss.id_weight": 1.0}, 35.0)
    return s


def test_a_study_folder_shows_the_first_variants_lowest_seed_not_the_best(study):
    assert pick_trial(study) == study / "t5"  # IRRA seed 1, though it has the lowest R1
    assert pick_trial(study, seed=2) == study / "t6"
    # BiLMa: its first grid point (id_weight 1.0, launched first), lowest seed
    assert pick_trial(study, variant="BiLMa") == study / "t3"
    assert pick_trial(study, variant="BiLMa [id_weight=0.5]") == study / "t2"
    assert pick_trial(study / "t2") == study / "t2"  # a trial directory is shown as given
    with pytest.raises(AnalysisError, match=r"--variant 'SDM': .* variants there: 'BiLMa', 'IRRA'"):
        pick_trial(study, variant="SDM")
    with pytest.raises(AnalysisError, match=r"--seed 7: .* of 'BiLMa'; seeds there: 1, 2"):
        pick_trial(study, variant="BiLMa", seed=7)
    with pytest.raises(AnalysisError, match=r"is one trial: --variant and --seed choose"):
        pick_trial(study / "t2", seed=1)


def test_the_figure_uses_the_selected_checkpoint_and_names_variant_and_seed(study):
    trial = study / "t2"
    with pytest.raises(AnalysisError, match=r"finished, but its selected checkpoint .*best.pt"):
        shown(trial)  # last.pt would be another checkpoint than the table's: refused
    (trial / "ckpt").mkdir()
    (trial / "ckpt" / "last.pt").write_bytes(b"")
    (trial / "ckpt" / "best.pt").write_bytes(b"")
    s = shown(trial)
    assert (s.checkpoint, s.epoch, s.variant, s.seed) == (
        trial / "ckpt" / "best.pt",
        2,
        "BiLMa [id_weight=0.5]",
        1,
    )
    queries = [Query("a man", 1, [Path("x")] * 3, [True, False, False])] * 2
    assert s.title("test", queries) == (
        "BiLMa [id_weight=0.5], seed 1 (synthetic): top-3 on the test split, checkpoint of "
        "epoch 2 selected by R1 on the val split; green: same person, 2/2 queries right at rank 1"
    )
    (trial / "result.json").unlink()  # unfinished: best.pt if any, said so
    assert "best.pt of an unfinished trial" in shown(trial).title("test", queries)


def test_captions_are_wrapped_not_cut(tmp_path):
    """A long caption gets as many lines as it needs, inside its own row; short ones keep
    the usual 2-inch rows."""
    image = tmp_path / "p.png"
    Image.new("RGB", (16, 32), "gray").save(image)
    long = " ".join(f"word{i:03d}" for i in range(120))  # 959 characters
    queries = [
        Query("a woman in a red coat", 1, [image] * 4, [True, False, False, True]),
        Query(long, 2, [image] * 4, [False] * 4),
        Query("a man with a bag", 3, [image] * 4, [True] * 4),
    ]
    short = figure([queries[0], queries[2]], "IRRA, seed 1 (synthetic)")
    short.canvas.draw()
    image_height = short.axes[1].get_window_extent(short.canvas.get_renderer()).height
    plt.close(short)
    fig = figure(queries, "IRRA, seed 1 (synthetic): " + "a long title " * 20)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = [ax.texts[0] for ax in fig.axes if ax.texts]
        assert len(texts) == 3
        assert texts[1].get_text().split() == long.split()  # every word, in order
        assert max(len(line) for line in texts[1].get_text().splitlines()) <= 40
        boxes = [t.get_window_extent(renderer) for t in texts]
        figbox = fig.bbox
        for box in boxes:  # inside the figure
            assert box.y0 >= figbox.y0 and box.y1 <= figbox.y1
            assert box.x0 >= figbox.x0 and box.x1 <= figbox.x1
        # Each caption stays between the images of the rows above and below it, and the
        # images keep the size they have beside short captions (no row is squeezed).
        images = [fig.axes[i * 5 + 1].get_window_extent(renderer) for i in range(3)]
        assert all(b.height >= image_height - 1.0 for b in images)
        assert all(box.x1 < image.x0 for box, image in zip(boxes, images, strict=True))
        for i, box in enumerate(boxes):
            if i > 0:
                assert box.y1 < images[i - 1].y0
            if i < 2:
                assert box.y0 > images[i + 1].y1
        title = fig._suptitle.get_window_extent(renderer)
        assert title.y1 <= figbox.y1 and title.y0 > boxes[0].y1
        assert title.x0 >= figbox.x0 and title.x1 <= figbox.x1
        # rows: 2 in, the long caption's (24 lines of 8 pt), 2 in; the title's 286 characters
        # on four lines of 84 (7 inches at 10 pt)
        assert fig._suptitle.get_text().count("\n") == 3
        heights = 2.0 + (24 * 10 / 72 + 0.4) + 2.0
        assert fig.get_size_inches()[1] == pytest.approx(heights + 0.4 + 3 * 12.5 / 72)
    finally:
        plt.close(fig)
