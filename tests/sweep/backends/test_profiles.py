"""cluster/profiles.py: every shipped profile loads, bad keys get one clear line, the
translation to submitit, and the sbatch preview against a golden file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bilma.sweep.backends.profiles import (
    PROFILES_DIR,
    ProfileError,
    available,
    load_profile,
    parse_sbatch_line,
    render_sbatch,
)

GOLDEN = Path(__file__).parent / "golden"


def write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_profiles_load():
    assert {"default", "local-slurm"} <= set(available())
    for name in available():
        prof = load_profile(name)
        assert prof.name == name
        params = prof.submitit_parameters()
        assert params["time"] == prof.time_min and params["ntasks_per_node"] == prof.tasks_per_node


def test_local_slurm_matches_the_dev_cluster():
    script = (PROFILES_DIR.parent / "dev-slurm.sh").read_text()
    prof = load_profile("local-slurm")
    assert "BILMA_SLURM_PARTITION:-debug" in script and prof.partition == "debug"
    assert prof.gpus_per_node == 0 and prof.cpus_per_task == 1 and prof.tasks == 1


def test_default_is_a_gpu_cluster_example():
    prof = load_profile("default")
    assert prof.gpus_per_node == 1 and prof.tasks_per_node == 1 and prof.partition == "gpu"
    text = (PROFILES_DIR / "default.yaml").read_text()
    # every key is there, with a comment
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert "#" in line, line


def test_by_path_and_every_key(tmp_path):
    path = write(
        tmp_path,
        """
partition: gpu
account: lab
qos: high
nodes: 2
tasks_per_node: 4
gpus_per_node: 4
cpus_per_task: 6
mem_gb: 128
time_min: 240
array_parallelism: 8
signal_delay_s: 300
max_requeues: 5
max_transient_retries: 1
retry_backoff_s: 30
gres: "gpu:a100:4"
constraint: "a100|h100"
exclusive: true
sbatch_extra: ["--mail-type=END", "#SBATCH --mail-user me@lab.org", "--hold"]
setup: ["module load cuda/12.4"]
""",
    )
    prof = load_profile(path)
    assert prof.name == "mine" and prof.tasks == 8 and prof.max_requeues == 5
    assert (prof.max_transient_retries, prof.retry_backoff_s) == (1, 30)  # the launcher's keys
    assert prof.submitit_parameters() == {
        "time": 240,
        "nodes": 2,
        "ntasks_per_node": 4,
        "cpus_per_task": 6,
        "array_parallelism": 8,
        "signal_delay_s": 300,
        "partition": "gpu",
        "account": "lab",
        "qos": "high",
        "constraint": "a100|h100",
        "gres": "gpu:a100:4",
        "gpus_per_node": 4,
        "mem": "128G",
        "exclusive": True,
        "setup": ["module load cuda/12.4"],
        "additional_parameters": {"mail-type": "END", "mail-user": "me@lab.org", "hold": True},
    }


def test_gpus_per_task(tmp_path):
    prof = load_profile(write(tmp_path, "gpus_per_task: 1\ntasks_per_node: 2\n"))
    params = prof.submitit_parameters()
    assert params["gpus_per_task"] == 1 and "gpus_per_node" not in params


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "partition: gpu\ntask_per_node: 2\n",
            "line 2: unknown key 'task_per_node'; did you mean 'tasks_per_node'?",
        ),
        ("gpu_per_node: 1\n", "line 1: unknown key 'gpu_per_node'; did you mean 'gpus_per_node'?"),
        ("max_requeue: 3\n", "did you mean 'max_requeues'?"),
        ("sbatch_lines: []\n", "did you mean 'sbatch_extra'?"),
        ("zzz: 1\n", "unknown key 'zzz'; valid keys: partition, account"),
        ("time_min: 0\n", "time_min = 0 must be a positive integer"),
        ("time_min: '60'\n", "time_min = '60' must be a positive integer"),
        ("gpus_per_node: -1\n", "gpus_per_node = -1 must be a non-negative integer"),
        ("max_requeues: true\n", "max_requeues = True must be a non-negative integer"),
        (
            "max_transient_retries: -1\n",
            "max_transient_retries = -1 must be a non-negative integer",
        ),
        ("retry_backoff_s: 1.5\n", "retry_backoff_s = 1.5 must be a non-negative integer"),
        ("max_transient_retry: 2\n", "did you mean 'max_transient_retries'?"),
        ("exclusive: yes please\n", "exclusive = 'yes please' must be true or false"),
        ("partition: 3\n", "partition = 3 must be a string"),
        ("setup: module load cuda\n", "setup must be a list of strings"),
        (
            "sbatch_extra: [mail-type=END]\n",
            "'mail-type=END' is not an sbatch option; write it as --option=value",
        ),
        (
            "sbatch_extra: ['--time=10']\n",
            "sbatch_extra sets --time, which the profile key time_min controls",
        ),
        ("sbatch_extra: ['--partition=x']\n", "the profile key partition controls"),
        (
            "gpus_per_node: 4\n",
            "gpus_per_node = 4 but tasks_per_node = 1: the trainer runs one process per GPU; set tasks_per_node: 4",
        ),
        ("gpus_per_node: 1\ngpus_per_task: 1\n", "give gpus_per_node or gpus_per_task, not both"),
        (
            "time_min: 1\nsignal_delay_s: 60\n",
            "signal_delay_s = 60 is not shorter than time_min = 1 minutes",
        ),
        ("partition: [gpu\n", "invalid YAML"),
        (
            "partition: gpu\ntime_min: 60\npartition: cpu\n",
            "line 3: invalid YAML: key 'partition' is given twice",
        ),
        ("- partition\n", "expected a mapping of keys"),
    ],
)
def test_errors_name_the_file_the_key_and_the_fix(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    message = str(e.value)
    assert str(path) in message and expected in message
    assert "\n" not in message


def test_unknown_profile_name():
    with pytest.raises(
        ProfileError, match=r"no profile 'local-slurn'; did you mean 'local-slurm'\?"
    ):
        load_profile("local-slurn")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("nowhere/mine.yaml")


def test_parse_sbatch_line():
    assert parse_sbatch_line("--mail-type=END") == ("mail-type", "END")
    assert parse_sbatch_line("#SBATCH --comment 'a b'") == ("comment", "'a b'")
    assert parse_sbatch_line("  --requeue ") == ("requeue", True)
    with pytest.raises(ValueError):
        parse_sbatch_line("-p gpu")


def _render(profile: str, array_size: int | None) -> str:
    return render_sbatch(
        load_profile(profile).submitit_parameters(),
        "/venv/bin/python -u -m submitit.core._submit /runs/study/slurm/%j",
        "/runs/study/slurm/%j",
        "bilma-study",
        array_size,
    )


@pytest.mark.parametrize(("profile", "array_size"), [("default", 12), ("local-slurm", None)])
def test_sbatch_golden(profile, array_size):
    """submitit's private sbatch renderer, pinned: an upgrade that changes it fails here.
    Regenerate after checking the difference: BILMA_REGEN_GOLDEN=1 pytest tests/cluster."""
    golden = GOLDEN / f"{profile}.sbatch"
    text = _render(profile, array_size)
    if os.environ.get("BILMA_REGEN_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_sbatch_of_every_option(tmp_path):
    path = write(
        tmp_path,
        "partition: gpu\nnodes: 2\ntasks_per_node: 2\ngpus_per_node: 2\nexclusive: true\n"
        "gres: 'gpu:2'\nsbatch_extra: ['--hold', '--mail-type=END']\nsetup: ['echo hi']\n",
    )
    text = render_sbatch(load_profile(path).submitit_parameters(), "cmd", "/f/%j", "j", 3)
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --exclusive",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --hold",
        "#SBATCH --mail-type=END",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --output=/f/%A_%a/%A_%a_0_log.out",
        "echo hi",
    ):
        assert line in text.splitlines(), (line, text)
