"""Fused prototype ops (C++/OpenMP on CPU, CUDA on GPU), registered as torch custom ops.

Same functions and semantics as :mod:`mper.reference`, which defines them in eager
PyTorch. Features are channels-first ``(B, D, *spatial)``; the bank is ``(C*K, D)`` with
row ``c*K + k`` holding prototype k of class c.
"""
from mper.ops._common import cuda_available
from mper.ops.accumulate import proto_accumulate
from mper.ops.classify import proto_classify
from mper.ops.ema import proto_ema_update_
from mper.ops.infonce import proto_classify_infonce, proto_infonce

__all__ = [
    "cuda_available",
    "proto_accumulate",
    "proto_classify",
    "proto_classify_infonce",
    "proto_ema_update_",
    "proto_infonce",
]
