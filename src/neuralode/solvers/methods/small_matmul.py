"""Small matrix products as generated loops inside neuralode's inductor graphs.

Inductor compiles a matrix product as a call of an external GEMM (ATen's, through MKL on the CPU) or, with GEMM
autotuning, of the template kernel it timed fastest at compile time. Where the product is tiny (the layers of a
small MLP on a small batch), the call, its output's allocation and the tensor wrappers around it cost more than
its arithmetic: a grid step of a 2→16→2 MLP on a batch of 8 is four such calls. Decomposed into a broadcast
product and a sum over the inner dimension, ``mm(a, b) = (a[:, :, None] * b[None, :, :]).sum(1)``, it becomes
a loop nest that inductor generates and fuses with what surrounds it (the bias, the activation, the stage
combination), with no call and no allocation of its own.

That loop nest does not block or vectorise as a GEMM does, so it is slower for larger products: the
decomposition is taken only for ``M K N <= MAX_WORK`` multiply-adds, the sizes at which
``benchmarks/bench_device_run.py``'s small workloads measured it faster (``benchmarks/results/device_run.md``);
beyond that ``NotImplemented`` keeps inductor's own lowering. It applies to 2-D float32 and float64
``aten.mm`` and ``aten.addmm`` (with ``beta = alpha = 1``, as ``nn.Linear`` makes it); the sum runs over the
inner dimension in another order than a GEMM's, so results differ from ATen's by rounding.
"""

from __future__ import annotations

import torch

MAX_WORK = 4096  # M K N: the largest product decomposed


def _small(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dim() == 2
        and b.dim() == 2
        and a.dtype in (torch.float32, torch.float64)
        and b.dtype == a.dtype
        and a.shape[0] * a.shape[1] * b.shape[1] <= MAX_WORK
    )


def _mm(a: torch.Tensor, b: torch.Tensor):
    if not _small(a, b):
        return NotImplemented
    return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta=1, alpha=1):
    if beta != 1 or alpha != 1 or bias.dtype != a.dtype or not _small(a, b):
        return NotImplemented
    return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1) + bias


def decompositions() -> dict:
    """``aten.mm`` and ``aten.addmm`` on small products (see the module docstring)."""
    return {torch.ops.aten.mm.default: _mm, torch.ops.aten.addmm.default: _addmm}
