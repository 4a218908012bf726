"""Device choice, ops selection, mixed precision, the Ctrl-C / SIGTERM stop request and
the run-folder lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from mper import reference
from mper.errors import CheckpointError, RunFolderError
from mper.train.checkpoint import CHECKPOINT_VERSION, OLDEST_READABLE_VERSION, load_checkpoint
from mper.train.lock import LOCK_FILE, run_folder_lock
from mper.train.runtime import StopRequest, autocast, load_ops, resolve_device


def test_devices_resolve_or_explain_what_to_use():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda:0")


def test_ops_are_selected_by_name():
    assert load_ops("reference") is reference
    assert callable(load_ops("mper").proto_classify_infonce)
    with pytest.raises(ValueError, match="mper, reference"):
        load_ops("fast")


def test_bf16_autocast_is_refused_off_cuda():
    with autocast(torch.device("cpu"), "off"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        autocast(torch.device("cpu"), "bf16")


def test_first_ctrl_c_requests_a_stop_and_the_second_aborts():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_requests_a_stop_like_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_folder_is_locked_while_a_run_uses_it(tmp_path):
    with run_folder_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunFolderError, match=rf"in use by another training run \(process {os.getpid()} on "):
            with run_folder_lock(tmp_path):
                pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"pid": other.pid, "host": socket.gethostname(), "started": "earlier"}
        (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
        with pytest.raises(RunFolderError, match=rf"process {other.pid} .* started earlier.*delete .*{LOCK_FILE}"):
            with run_folder_lock(tmp_path):
                pass
    finally:
        other.kill()
        other.wait()
    with run_folder_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_an_unwritable_run_folder_is_named(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(RunFolderError, match=r"cannot write in .*file"):
        with run_folder_lock(tmp_path / "file"):
            pass


def test_checkpoints_of_an_unreadable_older_format_are_refused_with_what_to_do(tmp_path):
    older, foreign = tmp_path / "older.pt", tmp_path / "foreign.pt"
    torch.save({"version": OLDEST_READABLE_VERSION - 1, "student": {}}, older)
    torch.save({"weights": {}}, foreign)
    with pytest.raises(
        CheckpointError,
        match=f"older mper \\(checkpoint format {OLDEST_READABLE_VERSION - 1}; "
        f"this mper reads formats 2 to {CHECKPOINT_VERSION}.*train it again",
    ):
        load_checkpoint(older)
    with pytest.raises(CheckpointError, match="not an mper checkpoint"):
        load_checkpoint(foreign)
