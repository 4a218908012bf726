"""Device choice, ops selection, mixed precision and the Ctrl-C stop request."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from mper import reference
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
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
