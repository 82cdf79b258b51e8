"""SIGTERM and SIGUSR2 during training: stop at the next batch, save the state, resume it exactly.

In-process and real: the signal is sent to this process by os.kill from inside a training step,
`kdsweep.train.fit` runs on the digits data. (Through SLURM and submitit: tests/test_slurm.py.)
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from kdsweep import preemption
from kdsweep.data import load_data
from kdsweep.methods import CE
from kdsweep.models import MLP
from kdsweep.train import fit

EPOCHS, BATCH = 3, 64


def train(data, signal_at_step: int | None = None, signum: int = signal.SIGUSR2):
    """fit() of a fresh seeded MLP with Adam; os.kill(signum) from inside step `signal_at_step` (from 0)."""
    torch.manual_seed(0)
    model = MLP(data.input_shape, data.num_classes, width=16, depth=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = [0]

    def loss_fn(logits, view, epoch):  # kdsweep.train.LossFn: the step's View and the epoch (DKD's warm-up)
        if steps[0] == signal_at_step:
            os.kill(os.getpid(), signum)
        steps[0] += 1
        return CE()(logits, None, data.train.y[view.idx])

    result = fit(model, data.train.x, loss_fn, optimizer, data.val, epochs=EPOCHS, batch_size=BATCH,
                 generator=torch.Generator().manual_seed(0))
    return result, steps[0]


@pytest.fixture(scope="module")
def data():
    return load_data("digits")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_a_signal_stops_training_at_the_next_batch_and_the_saved_state_resumes_it_exactly(tmp_path, data, signum):
    whole, n_steps = train(data)
    per_epoch = n_steps // EPOCHS
    at = per_epoch + 5  # step 6 of epoch 2 (0-based 5): training stops before the next batch, the 7th
    key = "the-same-trial"
    with pytest.raises(preemption.TrainingInterrupted) as stopped:
        with preemption.stop_on_signals(), preemption.resumable(tmp_path, key):
            train(data, signal_at_step=at, signum=signum)
    name = signal.Signals(signum).name
    assert f"stopped on {name} before batch 7 of {per_epoch} of epoch 2 " in str(stopped.value)
    assert stopped.value.signum == signum
    assert (tmp_path / preemption.STATE_FILE).exists()
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # the handler is restored

    # The requeued job: a fresh model, optimizer and generator, the same trial's folder and key.
    with preemption.stop_on_signals(), preemption.resumable(tmp_path, key):
        resumed, steps_after = train(data)
    assert steps_after == n_steps - (at + 1)  # only the batches not yet trained
    assert not (tmp_path / preemption.STATE_FILE).exists()  # training finished: the state is removed
    # Same operations in the same order on the same CPU: the same numbers, bit for bit.
    assert resumed.history == whole.history
    assert resumed.best_epoch == whole.best_epoch and resumed.best_val_acc == whole.best_val_acc
    assert all(torch.equal(resumed.best_state[k], whole.best_state[k]) for k in whole.best_state)


def test_a_state_saved_for_another_trial_is_not_resumed(tmp_path, data, caplog):
    whole, n_steps = train(data)
    with pytest.raises(preemption.TrainingInterrupted):
        with preemption.stop_on_signals(), preemption.resumable(tmp_path, "trial-a"):
            train(data, signal_at_step=3)
    with preemption.stop_on_signals(), preemption.resumable(tmp_path, "trial-b"):
        again, steps = train(data)
    assert steps == n_steps and again.history == whole.history  # trained from the start
    assert "was saved for another trial configuration: training starts from the beginning" in caplog.text


def test_a_signal_is_handed_to_the_previous_handler_once_training_has_stopped(tmp_path, data):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(preemption.TrainingInterrupted):
            with preemption.stop_on_signals():
                train(data, signal_at_step=2, signum=signal.SIGTERM)
                assert received == []  # not reached: training raised first
        assert received == [signal.SIGTERM]  # e.g. a sweeper's handler: it then stops the sweep
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_error_of_the_previous_handler_keeps_where_training_stopped(tmp_path, data):
    # submitit's SIGUSR2 handler raises "Job not requeued because: ..." when it cannot requeue: the
    # trial's error holds both messages (a pickled exception's cause would be lost on its way back).
    def submitit_like(signum, frame):
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        with pytest.raises(preemption.TrainingInterrupted) as stopped:
            with preemption.stop_on_signals():
                train(data, signal_at_step=2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert str(stopped.value).startswith("Job not requeued because: timed-out too many times. training (train) "
                                         "stopped on SIGUSR2 before batch 4 of ")
