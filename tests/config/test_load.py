"""Config tree: YAML with base files, overrides, validation messages, trial ids."""

from pathlib import Path

import pytest

from bilma import config
from bilma.config import Config, ConfigError, load_config, trial_id


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_irra_recipe():
    cfg = Config()
    assert cfg.optim.eps == 1e-3 and cfg.optim.lr == 1e-5 and cfg.optim.warmup_epochs == 5
    assert cfg.model.temperature == 0.02 and cfg.mlm.probability == 0.15
    assert cfg.tracking.uri == "sqlite:///mlflow.db" and cfg.paths.runs == "runs"


def test_base_chain_and_overrides(tmp_path):
    write(
        tmp_path / "base.yaml", "train:\n  epochs: 7\n  batch_size: 16\nmim:\n  mask_ratio: 0.3\n"
    )
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config(child, ["mim.target=pixel", "data.image_size=[192, 64]", "optim.grad_clip=1"])
    assert cfg.train.epochs == 9  # child wins over base
    assert cfg.train.batch_size == 16  # inherited
    assert cfg.mim.mask_ratio == 0.3
    assert cfg.mim.target == "pixel"
    assert cfg.data.image_size == [192, 64]
    assert cfg.optim.grad_clip == 1.0 and isinstance(cfg.optim.grad_clip, float)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("mim.mask_ration=0.3", "unknown key 'mim.mask_ration'; did you mean 'mim.mask_ratio'?"),
        ("mim.mask_ratio=1.5", "mim.mask_ratio = 1.5 is out of range [0.0, 0.95]"),
        (
            "mim.target=pix",
            "mim.target = 'pix' is not one of 'semantic', 'pixel', 'mean_rgb', 'feature', 'none'",
        ),
        ("train.epochs=2.5", "train.epochs = 2.5 is not an integer"),
        ("train.deterministic=1", "is not true or false"),
        ("data.image_size=[380,128]", "multiples of the patch size 16"),
        ("trian.epochs=3", "did you mean 'train.epochs'?"),
        ("epochs", "expected key=value"),
    ],
)
def test_override_errors(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_file_errors_name_file_and_key(tmp_path):
    bad = write(tmp_path / "bad.yaml", "mim:\n  mask_ratoi: 0.3\n")
    with pytest.raises(
        ConfigError,
        match=r"bad\.yaml: unknown key 'mim\.mask_ratoi'; did you mean 'mim\.mask_ratio'",
    ):
        load_config(bad)
    section = write(tmp_path / "sec.yaml", "modle:\n  name: tiny\n")
    with pytest.raises(
        ConfigError, match=r"sec\.yaml: unknown key 'modle\.name'; did you mean 'model\.name'"
    ):
        load_config(section)
    broken = write(tmp_path / "broken.yaml", "train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+: invalid YAML"):
        load_config(broken)
    base_missing = write(tmp_path / "orphan.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="base file 'nowhere.yaml' not found"):
        load_config(base_missing)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    value = write(tmp_path / "value.yaml", "base: bad.yaml\n")
    # the error names the base file where the typo is
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(value)


def test_cycle_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_trial_id_ignores_paths_and_tracking():
    a = load_config(None, ["train.seed=3"])
    b = load_config(
        None,
        [
            "train.seed=3",
            "paths.runs=/scratch/runs",
            "tracking.uri=http://127.0.0.1:5000",
            "data.root=/datasets/elsewhere/synth",
            "data.num_workers=8",
            "eval.batch_size=1024",
        ],
    )
    assert trial_id(a) == trial_id(b)
    assert len(trial_id(a)) == 10
    # but the seed, a loss weight or the weights' folder name change it
    assert trial_id(a) != trial_id(load_config(None, ["train.seed=4"]))
    assert trial_id(a) != trial_id(load_config(None, ["train.seed=3", "loss.mim_weight=0.5"]))
    c = load_config(None, ["train.seed=3", "model.pretrained=/w/clip-vit-base-patch16"])
    d = load_config(None, ["train.seed=3", "model.pretrained=/other/clip-vit-base-patch16/"])
    assert trial_id(c) == trial_id(d) != trial_id(a)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["mim.labels=atr18", "optim.grad_clip=5.0"])
    path = write(tmp_path / "resolved.yaml", config.dump_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert trial_id(again) == trial_id(cfg)


def test_describe_keys_lists_every_key():
    text = config.describe_keys()
    for key in config.VALID_KEYS:
        assert key in text


def test_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 4e-5 as a string; a researcher means a number
    cfg = load_config(write(tmp_path / "e.yaml", "optim:\n  lr: 4e-5\n"), ["optim.eps=1e-8"])
    assert cfg.optim.lr == 4e-5 and cfg.optim.eps == 1e-8
    with pytest.raises(ConfigError, match="is not a number"):
        load_config(None, ["optim.lr=fast"])


@pytest.mark.parametrize(
    "override",
    ["optim.lr=nan", "mim.mask_ratio=nan", "loss.mim_weight=inf", "optim.grad_clip=.inf"],
)
def test_nan_and_infinity_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"command line: {key} = .* is not a finite number"):
        load_config(None, [override])


def test_nan_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "n.yaml", "optim:\n  lr: .nan\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: optim.lr = nan is not a finite number"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", ": line 3: invalid YAML: key 'lr' is given twice"),
        ("optim:\n  lr: 0.1\ntrain:\n  epochs: 2\noptim:\n  eps: 0.1\n", "key 'optim' is given"),
        ("optim:\n  lr: 0.1\noptim.lr: 0.2\n", "key 'optim.lr' is given twice (dotted and nested)"),
    ],
)
def test_a_key_given_twice_is_refused(tmp_path, text, expected):
    path = write(tmp_path / "twice.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(str(path)) and expected in str(e.value)


def test_config_and_grid_files_share_one_yaml_loader():
    import bilma.sweep.gridfile
    from bilma.config import yamlfile as yamlio

    assert config.safe_load_unique is yamlio.safe_load_unique
    assert bilma.sweep.gridfile.safe_load_unique is yamlio.safe_load_unique


def test_a_trial_run_on_another_data_root_is_named(synth_small, tmp_path, caplog):
    """data.root is not in the trial id: training with a new root finds the old trial and says
    so in one line naming both roots, instead of silently reporting the old result."""
    from support.tiny import tiny_overrides

    from bilma.runs.reuse import data_root_warning
    from bilma.runs.trial_dir import TrialDir
    from bilma.training.trainer import train

    base = tiny_overrides(synth_small, tmp_path / "runs", "train.epochs=1")
    cfg = load_config(None, [*base, "train.max_steps_per_epoch=2"])
    trial = TrialDir.for_config(cfg)
    assert data_root_warning(trial.config_path, cfg) is None  # no trial yet
    first = train(cfg, progress=False)
    assert data_root_warning(trial.config_path, cfg) is None  # same root
    same = load_config(None, [*base, "train.max_steps_per_epoch=2", f"data.root={synth_small}/."])
    assert data_root_warning(trial.config_path, same) is None  # the same folder, written apart

    moved = load_config(None, [*base, "train.max_steps_per_epoch=2", "data.root=/elsewhere/x"])
    assert trial_id(moved) == trial_id(cfg)
    caplog.set_level("WARNING")
    assert train(moved, progress=False) == first
    lines = [r.getMessage() for r in caplog.records if "data.root=" in r.getMessage()]
    assert lines == [
        f"{trial.path} was run on data.root={synth_small}, not /elsewhere/x: its result and "
        f"checkpoint come from {synth_small}; data.root is not part of the trial id, so use "
        "another paths.runs to train on the new root"
    ]


@pytest.mark.parametrize("spelling", ["off", "'off'", "Off"])
def test_amp_off_is_taken_as_written_on_the_command_line(spelling):
    """YAML reads a bare `off` as false: the choice `off` is meant."""
    assert load_config(None, [f"train.amp={spelling}"]).train.amp == "off"


def test_amp_off_is_taken_as_written_in_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(path).train.amp == "off"
    path.write_text("train:\n  amp: true\n")  # no choice is a true word: still refused
    with pytest.raises(ConfigError, match=r"c.yaml: train.amp = True is not one of"):
        load_config(path)
