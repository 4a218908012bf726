"""Sums over the processes of a ``torch.distributed`` group that gradients flow through,
and batch norm over the batches of every process on the CPU.

Under data parallelism each process computes its loss on its share of the batch and
``DistributedDataParallel`` averages the gradients. A quantity pooled over the whole
batch (the statistics of batch norm, the sums of a pooled Dice ratio) is the sum of
every process's part: :func:`sum_over_processes` adds them up in the forward pass and
adds up their gradients in the backward pass, so that the averaged gradient is the one
a single process gets on the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def grouped() -> bool:
    """Whether this process is in an initialised ``torch.distributed`` group (one of a
    single process included, which runs the same code as several)."""
    return dist.is_available() and dist.is_initialized()


class _SumOverProcesses(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes (``tensor`` itself without a group); its
    gradient is the sum of every process's gradient."""
    return _SumOverProcesses.apply(tensor) if grouped() else tensor


class CrossProcessBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the batch of every process, for the
    CPU (gloo), where :class:`torch.nn.SyncBatchNorm` does not run.

    Outside training, or outside a process group, it is plain batch norm. It has the
    parameters and buffers of ``BatchNorm{1,2,3}d``, so its weights load into them.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and grouped()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = sum_over_processes(input.new_tensor([input.numel() / input.shape[1]]))
        mean = sum_over_processes(input.sum(dims)) / count
        centred = input - mean.view(shape)
        variance = sum_over_processes((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach(), float(count))
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, variance: torch.Tensor, count: float) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = variance * count / max(count - 1.0, 1.0)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every ``BatchNorm{1,2,3}d`` in it replaced by one of these,
        holding the same weights and buffers."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            converted.load_state_dict(module.state_dict())
            return converted.to(next(iter(module.state_dict().values())).device).train(module.training)
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module
