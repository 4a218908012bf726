"""The training loop never waits for the device inside an iteration: the steps leave
their losses on the device and the loop reads them back once per ``eval.log_interval``
(with the time it waited for data), still stopping at the first non-finite loss."""
from __future__ import annotations

import traceback

import pytest
import torch

from mper import pipeline
from mper.datasets import synthesize
from mper.errors import TrainingDiverged
from mper.train import selftrain
from mper.train.loop import ScalarWindow
from mper.train.pretrain import supervised_step
from test_pipeline import after_optimizer_steps, fill_weights_with_nan, tiny_config
from test_recipe_switches import tiny_batch, tiny_trainer


@pytest.fixture(scope="module")
def acdc_data(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


def _allowed(stack: traceback.StackSummary) -> bool:
    # the copy-paste box is drawn from a generator on the host: reading it never waits
    return any(frame.filename.endswith("train/mixing.py") for frame in stack)


@pytest.fixture
def host_reads_fail(monkeypatch):
    """Within the fixture, reading a tensor's value on the host raises."""

    def guarded(name, original):
        def read(self, *args, **kwargs):
            if not _allowed(traceback.extract_stack()):
                raise AssertionError(f"Tensor.{name} read a value on the host inside a training step")
            return original(self, *args, **kwargs)
        return read

    def arm():
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, guarded(name, getattr(torch.Tensor, name)))
    return arm


@pytest.mark.parametrize("preset", ["paper", "reference"])
def test_steady_state_steps_read_nothing_back_from_the_device(tmp_path, host_reads_fail, preset):
    # a long run: prototype usage is read back at the end of its windows, not in between
    trainer = tiny_trainer(tmp_path, "selftrain.iterations=5000", preset=preset)
    selftrain.selftrain_step(trainer, tiny_batch(0), iteration=0)
    supervised_step(trainer, tiny_batch(0), mix=True)
    host_reads_fail()
    for iteration in range(1, 4):
        scalars = selftrain.selftrain_step(trainer, tiny_batch(iteration), iteration=iteration)
        assert isinstance(scalars["loss"], torch.Tensor) and scalars["loss"].dim() == 0
        assert isinstance(supervised_step(trainer, tiny_batch(iteration), mix=True)["loss"], torch.Tensor)
        assert isinstance(supervised_step(trainer, tiny_batch(iteration), mix=False)["loss"], torch.Tensor)


@pytest.mark.cuda
def test_steady_state_self_training_makes_no_cuda_synchronisation(tmp_path):
    trainer = tiny_trainer(tmp_path, "device=cuda", "selftrain.iterations=5000")
    batches = [{key: value.cuda() for key, value in tiny_batch(seed).items()} for seed in range(4)]
    selftrain.selftrain_step(trainer, batches[0], iteration=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for iteration, batch in enumerate(batches[1:], start=1):
            selftrain.selftrain_step(trainer, batch, iteration=iteration)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_loss_that_turns_non_finite_between_reads_is_named_by_its_iteration(
    acdc_data, tmp_path, monkeypatch
):
    after_optimizer_steps(monkeypatch, 2, fill_weights_with_nan)  # iteration 3's loss is NaN
    run_dir = tmp_path / "run"
    config = tiny_config(acdc_data, run_dir, "eval.log_interval=10", "eval.checkpoint_interval=10",
                         "eval.val_interval=4")  # read back first at iteration 4
    with pytest.raises(TrainingDiverged, match="pretrain iteration 3: the loss is nan"):
        pipeline.train(config)
    assert not (run_dir / "last.pt").exists() and not (run_dir / "pretrain_best.pt").exists()


def test_train_log_says_how_long_each_iteration_waited_for_data(acdc_data, tmp_path):
    run_dir = pipeline.train(tiny_config(acdc_data, tmp_path / "run", "eval.log_interval=2"))
    log = (run_dir / "train.log").read_text()
    assert log.count("ms for data per") >= 2


def test_a_window_reads_its_iterations_back_in_order_with_their_timing():
    window = ScalarWindow()
    window.add(1, {"loss": torch.tensor(0.5), "lr": 0.1})
    window.add(2, {"loss": torch.tensor(0.25), "lr": 0.05, "bank_update_voxels": torch.tensor(3)})
    window.data_wait, window.busy = 0.002, 0.010
    rows, timing = window.read()
    assert rows == [(1, {"loss": 0.5, "lr": 0.1}), (2, {"loss": 0.25, "lr": 0.05, "bank_update_voxels": 3.0})]
    assert timing["data_wait_ms"] == pytest.approx(1.0)
    assert 5.0 <= timing["iteration_ms"] < 1000.0
    assert window.read()[0] == [] and window.data_wait == 0.0
