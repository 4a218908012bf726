"""Fused prototype ops (C++/OpenMP on CPU, CUDA on GPU), registered as torch custom ops.

Same functions and semantics as :mod:`mper.reference`, which defines them in eager
PyTorch. Features are channels-first ``(B, D, *spatial)``; the bank is ``(C*K, D)`` with
row ``c*K + k`` holding prototype k of class c. :func:`largest_component` cleans label
maps (the teacher's pseudo labels).
"""

from mper.ops._common import cuda_available
from mper.ops.accumulate import proto_accumulate
from mper.ops.classify import proto_classify
from mper.ops.ema import proto_ema_update_
from mper.ops.infonce import proto_classify_infonce, proto_infonce
from mper.ops.largest_component import largest_component

__all__ = [
    "cuda_available",
    "largest_component",
    "proto_accumulate",
    "proto_classify",
    "proto_classify_infonce",
    "proto_ema_update_",
    "proto_infonce",
]
