"""Why an attempt ended: causes from exceptions and from SLURM's states, their record in
status.json (the trainer's, for a data error and for a bug), and the --retry-failed filter."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from support.tiny import tiny_overrides

from bilma.config import load_config
from bilma.errors import (
    CheckpointMismatch,
    ConfigError,
    DataError,
    GridError,
    UnreadableCheckpoint,
)
from bilma.runs import causes
from bilma.runs.causes import (
    cause_of_exception,
    cause_of_slurm_state,
    end_fields,
    parse_causes,
    settled_cause,
    wants_retry,
)
from bilma.runs.schema import CAUSES, TRANSIENT_CAUSES
from bilma.runs.trial_dir import TrialDir

# ----------------------------------------------------------------------------- exceptions


class _TorchOOM(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError (told by its name and module)."""


_TorchOOM.__name__ = "OutOfMemoryError"
_TorchOOM.__module__ = "torch.cuda"


class _DistBackendError(RuntimeError):
    pass


_DistBackendError.__name__ = "DistBackendError"
_DistBackendError.__module__ = "torch.distributed"


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (_TorchOOM("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0)"), "out_of_memory"),
        (RuntimeError("CUDA error: out of memory"), "out_of_memory"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: can't allocate memory"
            ),
            "out_of_memory",
        ),
        (_DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1970"), "communication_timeout"),
        (
            RuntimeError(
                "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, "
                "OpType=ALLREDUCE) ran for 1800000 milliseconds before timing out."
            ),
            "communication_timeout",
        ),
        (
            RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection closed by peer"),
            "communication_timeout",
        ),
        (TimeoutError("Socket Timeout"), "communication_timeout"),
        (DataError("image not found: x.jpg"), "data_error"),
        (UnreadableCheckpoint("last.pt is torn", "truncated"), "data_error"),
        (CheckpointMismatch("other model"), "data_error"),
        (ConfigError("train.lr: unknown key"), "config_error"),
        (KeyboardInterrupt(), "cancelled"),
        (ZeroDivisionError("division by zero"), "bug"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "bug"),
        (TimeoutError("the lock was held"), "bug"),  # a timeout, but no collective's
        (GridError("grid.yaml: bad"), "bug"),  # not a trainer input: not config_error
    ],
)
def test_cause_of_each_exception(exc, cause):
    assert cause_of_exception(exc) == cause


def test_cause_of_an_exception_raised_from_another():
    # a loader re-raising a worker's DataError, or a CUDA OOM caught and wrapped
    assert cause_of_exception(_raised_from(RuntimeError("worker 0 failed"), DataError("x"))) == (
        "data_error"
    )
    wrapped = _raised_from(ValueError("step failed"), _TorchOOM("CUDA out of memory"))
    assert cause_of_exception(wrapped) == "out_of_memory"


def test_real_torch_oom_error_is_out_of_memory():
    torch = pytest.importorskip("torch")
    assert cause_of_exception(torch.cuda.OutOfMemoryError("CUDA out of memory")) == (
        "out_of_memory"
    )


# ----------------------------------------------------------------------------- SLURM


@pytest.mark.parametrize(
    ("state", "cause"),
    [
        ("OUT_OF_MEMORY", "out_of_memory"),
        ("NODE_FAIL", "node_failure"),
        ("BOOT_FAIL", "node_failure"),
        ("PREEMPTED", "preemption"),
        ("TIMEOUT", "time_limit"),
        ("DEADLINE", "time_limit"),
        ("CANCELLED", "cancelled"),
        ("CANCELLED by 0", "cancelled"),
        ("CANCELLED+", "cancelled"),
        ("FAILED", None),
        ("COMPLETED", None),
        ("RUNNING", None),
        ("PENDING", None),
        ("REQUEUED", None),
        ("unknown", None),
        ("", None),
    ],
)
def test_cause_of_each_slurm_state(state, cause):
    assert cause_of_slurm_state(state) == cause


def test_settled_cause_prefers_what_slurm_saw():
    # an OOM kill: the trainer saw only the signal (or nothing); SLURM's state wins
    assert settled_cause(None, "OUT_OF_MEMORY") == "out_of_memory"
    assert settled_cause("bug", "NODE_FAIL") == "node_failure"
    # FAILED: the trainer's exception tells; said nothing -> a bug
    assert settled_cause("data_error", "FAILED") == "data_error"
    assert settled_cause(None, "FAILED") == "bug"
    assert settled_cause("bug", "COMPLETED") == "bug"
    assert settled_cause(None, "RUNNING") is None


def test_vocabulary():
    assert set(TRANSIENT_CAUSES) == {"node_failure", "preemption", "communication_timeout"}
    assert set(TRANSIENT_CAUSES) < set(CAUSES)
    for cause in ("bug", "data_error", "config_error", "out_of_memory"):
        assert cause in CAUSES and not causes.is_transient(cause)


# ----------------------------------------------------------------------------- the filter


def test_parse_causes_and_the_filter():
    assert parse_causes("out_of_memory,node_failure") == {"out_of_memory", "node_failure"}
    assert parse_causes(" bug ") == {"bug"}
    with pytest.raises(ValueError, match=r"unknown cause 'oom'; valid causes: out_of_memory, "):
        parse_causes("oom,bug")
    with pytest.raises(ValueError, match="no cause"):
        parse_causes(",")
    oom = {"state": "failed", "cause": "out_of_memory"}
    old = {"state": "failed", "error": "x"}  # a status.json from before causes
    assert wants_retry(oom, True) and wants_retry(old, True)
    assert not wants_retry(oom, False)
    assert wants_retry(oom, frozenset({"out_of_memory", "bug"}))
    assert not wants_retry(oom, frozenset({"node_failure"}))
    assert not wants_retry(old, frozenset({"bug"}))


# ----------------------------------------------------------------------------- the record


def test_end_fields_one_record_per_attempt(tmp_path):
    trial = TrialDir(tmp_path / "t")
    trial.path.mkdir()
    trial.set_status("pending", job_id="7_0")
    trial.start_attempt()
    st = trial.end_attempt("failed", cause="bug", error="ZeroDivisionError: x")
    assert st["cause"] == "bug" and st["state"] == "failed" and st["error"].startswith("Zero")
    (rec,) = st["attempt_log"]
    assert rec["attempt"] == 1 and rec["job_id"] == "7_0" and rec["state"] == "failed"
    assert rec["cause"] == "bug" and rec["source"] == "trainer"
    # SLURM's view of the same attempt updates its record, keeping the trainer's error
    again = end_fields(trial.status(), "failed", "out_of_memory", source="slurm")
    (rec2,) = again["attempt_log"]
    assert rec2["cause"] == "out_of_memory" and rec2["error"] == "ZeroDivisionError: x"
    assert rec2["ended"] == rec["ended"]
    # the next attempt gets its own record; a done one has no cause
    trial.start_attempt()
    st = trial.end_attempt("done")
    assert [r["attempt"] for r in st["attempt_log"]] == [1, 2]
    assert st["attempt_log"][1]["cause"] is None and st["cause"] is None


def test_old_status_json_stays_readable(tmp_path):
    """A status.json written before causes (attempts an int, no attempt_log) is read, planned
    and extended as before."""
    trial = TrialDir(tmp_path / "t")
    trial.path.mkdir()
    (trial.path / "status.json").write_text(
        '{"state": "failed", "attempts": 3, "error": "RuntimeError: x", "updated": 1.0}'
    )
    assert trial.state().value == "failed"
    st = trial.end_attempt("failed", cause="bug", error="RuntimeError: y")
    assert st["attempts"] == 3 and st["attempt_log"][0]["attempt"] == 3


# ----------------------------------------------------------------------------- the trainer


def _train_fails(cfg) -> BaseException:
    from bilma.training.trainer import train

    with pytest.raises(BaseException) as info:
        train(cfg, progress=False)
    return info.value


def test_trainer_records_a_data_error(synth_small, tmp_path):
    """Images gone from the dataset: the trial fails with a DataError, recorded data_error."""
    root = tmp_path / "data"
    shutil.copytree(synth_small, root)
    shutil.rmtree(root / "imgs")
    shutil.rmtree(root / "cache", ignore_errors=True)
    (root / "imgs").mkdir()
    cfg = load_config(None, tiny_overrides(root, tmp_path / "runs"))
    err = _train_fails(cfg)
    assert isinstance(err, DataError), err
    st = TrialDir.for_config(cfg).status()
    assert st["state"] == "failed" and st["cause"] == "data_error", st
    assert st["attempt_log"][-1]["cause"] == "data_error"
    assert st["attempt_log"][-1]["error"].startswith("DataError: ")


def test_trainer_records_a_bug(synth_small, tmp_path, monkeypatch):
    from bilma.training import trainer

    def broken(self):
        raise ZeroDivisionError("a bug in a loss")

    monkeypatch.setattr(trainer.Trainer, "fit", broken)
    cfg = load_config(None, tiny_overrides(synth_small, tmp_path / "runs"))
    err = _train_fails(cfg)
    assert isinstance(err, ZeroDivisionError)
    st = TrialDir.for_config(cfg).status()
    assert st["state"] == "failed" and st["cause"] == "bug"
    assert st["error"] == "ZeroDivisionError: a bug in a loss"
    assert [r["cause"] for r in st["attempt_log"]] == ["bug"]


# ----------------------------------------------------------------------------- requeued by SLURM


def _fake_sacct(monkeypatch, runs: list[str]) -> list[list[str]]:
    """sacct -D answering `runs` (one State per run of the job, this one last)."""
    calls: list[list[str]] = []

    def run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(returncode=0, stdout="".join(f"{r}\n" for r in runs))

    monkeypatch.setattr(causes.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(causes.subprocess, "run", run)
    return calls


def test_requeued_run_state_asks_sacct_for_the_previous_run(monkeypatch):
    calls = _fake_sacct(monkeypatch, ["NODE_FAIL", "RUNNING"])
    env = {"SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40"}
    assert causes.requeued_run_state({**env, "SLURM_ARRAY_TASK_ID": "1"}) == "NODE_FAIL"
    assert calls[-1][-2:] == ["-j", "40_1"] and "-D" in calls[-1]
    assert causes.requeued_run_state(env) == "NODE_FAIL" and calls[-1][-1] == "41"
    n = len(calls)
    assert causes.requeued_run_state({"SLURM_JOB_ID": "41"}) == ""  # not requeued: no sacct
    assert causes.requeued_run_state({}) == "" and len(calls) == n


def test_an_attempt_that_died_without_a_word_gets_its_record(tmp_path, monkeypatch):
    """SLURM requeued the job by itself after a node failure: the next attempt finds
    status.json still running and records the killed attempt with SLURM's cause."""
    _fake_sacct(monkeypatch, ["NODE_FAIL", "RUNNING"])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    trial = TrialDir(tmp_path / "t")
    trial.path.mkdir()
    trial.set_status("pending", job_id="41")
    trial.start_attempt()  # the first run: nothing before it
    assert "attempt_log" not in trial.status()
    st_attempts = trial.start_attempt()  # the requeued run
    st = trial.status()
    assert st_attempts == 2 and st["state"] == "running"
    (rec,) = st["attempt_log"]
    assert (rec["attempt"], rec["job_id"], rec["state"]) == (1, "41", "interrupted")
    assert (rec["cause"], rec["source"]) == ("node_failure", "slurm")
    # outside a requeued job the cause is unknown, but the attempt is still recorded
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    trial.start_attempt()
    last = trial.status()["attempt_log"][-1]
    assert (last["attempt"], last["cause"], last["state"]) == (2, None, "failed")


def test_an_attempt_that_saved_on_the_kill_gets_slurms_cause(tmp_path, monkeypatch):
    """The node failure's kill reached the trainer as SIGTERM: it saved and recorded an
    interruption without a cause; the requeued run fills in SLURM's."""
    _fake_sacct(monkeypatch, ["NODE_FAIL", "RUNNING"])
    trial = TrialDir(tmp_path / "t")
    trial.path.mkdir()
    trial.set_status("pending", job_id="41")
    trial.start_attempt()
    trial.end_attempt("interrupted", error="SIGTERM received: saved epoch 2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    trial.start_attempt()
    (rec,) = trial.status()["attempt_log"]
    assert (rec["state"], rec["cause"], rec["source"]) == ("interrupted", "node_failure", "slurm")
    assert rec["error"] == "SIGTERM received: saved epoch 2"
    # submitit's own requeue after a time limit: sacct says REQUEUED, nothing to add
    _fake_sacct(monkeypatch, ["REQUEUED", "RUNNING"])
    trial.end_attempt("interrupted", error="SIGUSR2 received")
    before = trial.status()["attempt_log"]
    trial.start_attempt()
    assert trial.status()["attempt_log"] == before


def test_the_cause_of_a_ray_trial_that_failed_outside_the_trainer():
    """Tune's pickled error of a trial whose worker died (real Ray exception classes)."""
    import ray.exceptions as rx

    from bilma.runs.causes import cause_of_ray_error

    assert cause_of_ray_error(None) is None
    assert (
        cause_of_ray_error(
            rx.OutOfMemoryError("Task was killed due to the node running low on memory")
        )
        == "out_of_memory"
    )
    assert cause_of_ray_error(rx.NodeDiedError("node 3f2 died")) == "node_failure"
    died = rx.RayActorError(error_msg="The actor is dead because its node has died. Node Id: 3f2")
    assert cause_of_ray_error(died) == "node_failure"
    assert cause_of_ray_error(rx.RayActorError(preempted=True)) == "preemption"
    assert cause_of_ray_error(rx.ActorDiedError()) is None  # Ray does not say why
    generic = (  # what Ray 2.60 wrote for a worker killed by SIGKILL (tests/sweep/backends)
        "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR "
        "Some common causes include: (1) the process was killed by the OOM killer due to high "
        "memory usage, (2) ray stop --force was called"
    )
    assert cause_of_ray_error(rx.RayActorError(error_msg=generic)) is None  # not "OOM"
    wrapped = rx.RayTaskError("run_trial", "Traceback ...", DataError("data/x.json: line 3"))
    assert cause_of_ray_error(wrapped) == "data_error"
    assert cause_of_ray_error(ValueError("a bug in the trainable")) == "bug"


def test_a_ray_worker_death_is_recorded_with_its_cause(tmp_path):
    from bilma.config import load_config
    from bilma.sweep.backends.ray_trainable import record_failed

    cfg = load_config(None, ["tracking.enabled=false"])
    trial = TrialDir(tmp_path / "t")
    trial.path.mkdir()
    trial.set_status("pending")
    trial.start_attempt()
    record_failed(trial, cfg, "Ray trial a_1 failed: node died", "node_failure")
    st = trial.status()
    assert (st["state"], st["cause"]) == ("failed", "node_failure")
    (rec,) = st["attempt_log"]
    assert (rec["state"], rec["cause"], rec["source"], rec["attempt"]) == (
        "failed",
        "node_failure",
        "ray",
        1,
    )
    record_failed(trial, cfg, "again", None)  # recorded already: kept as it was
    assert trial.status()["attempt_log"] == st["attempt_log"]
