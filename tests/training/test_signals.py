"""Stop signals in the trainer's process (`bilma.training.signals`), sent to this process."""

from __future__ import annotations

import os
import signal
import time

from bilma.training.signals import EARLY_SIGNALS, StopFlag, catch_early


def _wait_for(flag: StopFlag) -> None:
    deadline = time.monotonic() + 5
    while not flag.signum and time.monotonic() < deadline:
        time.sleep(0.01)  # the handler runs in this thread, between these sleeps


def test_a_stop_signal_before_the_trainers_flag_is_kept():
    """A trial job's start-up: SIGTERM before the trainer installs its flag stops the trainer
    at its first step, instead of being dropped (submitit) or killing it."""
    before = {s: signal.getsignal(s) for s in EARLY_SIGNALS}
    with catch_early() as early:
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(early)
        trainer = StopFlag()
        trainer.install()
        try:
            assert trainer.signum == signal.SIGTERM
        finally:
            trainer.restore()
    assert {s: signal.getsignal(s) for s in EARLY_SIGNALS} == before
    later = StopFlag()  # outside the block: nothing is carried over
    later.install()
    later.restore()
    assert later.signum == 0


def test_the_first_signal_names_the_stop():
    """The terminal's SIGINT, then the launcher's SIGTERM: the stop is the SIGINT's."""
    flag = StopFlag()
    flag.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(flag)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert flag.signum == signal.SIGINT
    finally:
        flag.restore()


def test_a_forked_helper_still_dies_of_the_signal():
    """A DataLoader worker forked during start-up inherits the early handler: it must die of
    the group's SIGTERM as it would without it."""
    with catch_early():
        pid = os.fork()
        if pid == 0:  # the child: signalled, it must not live on to exit 0
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
