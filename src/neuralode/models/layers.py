"""Reusable continuous-depth layers, the building blocks of every model here and of users' own.

* :class:`ODEFunc`: base class for right-hand sides ``f(t, y)`` that counts its evaluations,
  forward solves and adjoint backward solves apart (``nfe_forward``, ``nfe_backward``).
* :class:`ConcatLinear`, :class:`ConcatConv2d`: layers that see time by concatenating ``t`` to
  their input as an extra feature / channel, as in the paper's reference code.
* :class:`ODEBlock`: ``z(t1) = z(t0) + ∫ f(z, t) dt`` as an ``nn.Module``, differentiated by the
  adjoint method or by backpropagation through the solver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..solvers import odeint, odeint_adjoint
from ..solvers.adjoint.common import in_adjoint_backward


class ODEFunc(nn.Module):
    """Base class for ODE right-hand sides: subclass and implement ``forward(t, y)``.

    Every call is counted: ``nfe_forward`` during ordinary solves (and backprop through them),
    ``nfe_backward`` during the backward solve of the adjoint method. ``reset_nfe()`` zeroes both.

    The count is a side effect that a compiled ``while_loop`` cannot hold, so a ``func`` that counts its own calls
    could not run inside neuralode's compiled runs of steps (``options={"compile": ...}``). An ``ODEFunc`` lets the
    solver count for it (the protocol of :func:`neuralode.solvers.counting.counted_by_solver`): the solver suspends
    the counting (:meth:`suspend_counting`) while its compiled graphs run, then adds the evaluations they made
    (:meth:`count_calls`), so the counters stay right and the module compiles once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nfe_forward = 0
        self.nfe_backward = 0
        self._counting = True

    def __call__(self, t, y):
        if self._counting:
            self.count_calls(1)
        return super().__call__(t, y)

    def count_calls(self, n: int) -> None:
        """Add ``n`` evaluations: to ``nfe_backward`` inside the adjoint's backward solve, else to ``nfe_forward``."""
        if in_adjoint_backward():
            self.nfe_backward += n
        else:
            self.nfe_forward += n

    @contextlib.contextmanager
    def suspend_counting(self) -> Iterator[None]:
        """Calls inside the block are not counted (the solver counts them with :meth:`count_calls`)."""
        saved, self._counting = self._counting, False
        try:
            yield
        finally:
            self._counting = saved

    def reset_nfe(self) -> None:
        """Set both counters to zero."""
        self.nfe_forward = 0
        self.nfe_backward = 0


class ConcatLinear(nn.Module):
    """``Linear([y, t])``: a linear layer whose input is the state with time appended.

    Args:
        dim_in, dim_out: feature sizes, without the time feature.

    Shapes: ``y`` is ``(..., dim_in)``; the result is ``(..., dim_out)``.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t.to(y.dtype).expand(*y.shape[:-1], 1)
        return self.linear(torch.cat([y, tt], dim=-1))


class ConcatConv2d(nn.Module):
    """``Conv2d([y, t])``: a convolution whose input has a constant time channel appended.

    Args:
        dim_in, dim_out: channels, without the time channel.
        kernel_size, stride, padding, bias: as for ``nn.Conv2d``.

    Shapes: ``y`` is ``(batch, dim_in, H, W)``; the result is ``(batch, dim_out, H', W')``.
    """

    def __init__(
        self, dim_in: int, dim_out: int, kernel_size: int = 3, stride: int = 1, padding: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim_in + 1, dim_out, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t.to(y.dtype).expand(y.shape[0], 1, *y.shape[2:])  # (batch, 1, H, W)
        return self.conv(torch.cat([y, tt], dim=1))


class ODEBlock(nn.Module):
    """A continuous-depth layer: returns the solution of ``dz/dt = func(t, z)`` at ``t[-1]``.

    Args:
        func: the dynamics, an ``nn.Module`` (an :class:`ODEFunc` to get NFE counts).
        t: integration times ``(t0, t1)`` (or more; only the last state is returned).
        method, rtol, atol, options: passed to the solver.
        adjoint: differentiate by the adjoint method (constant memory) instead of
            backpropagation through the solver.

    Attributes:
        nfe_forward, nfe_backward: evaluations of ``func`` in the last forward and backward pass
            (available when ``func`` is an :class:`ODEFunc`).
    """

    t: torch.Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        func: nn.Module,
        t: Sequence[float] = (0.0, 1.0),
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        options: dict | None = None,
        adjoint: bool = True,
    ) -> None:
        super().__init__()
        self.func = func
        self.register_buffer("t", torch.as_tensor(list(t), dtype=torch.float64), persistent=False)
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = options
        self.adjoint = adjoint

    @property
    def nfe_forward(self) -> int:
        return getattr(self.func, "nfe_forward", 0)

    @property
    def nfe_backward(self) -> int:
        return getattr(self.func, "nfe_backward", 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(self.func, ODEFunc):
            self.func.reset_nfe()  # the counters then describe this forward pass and its backward
        solver = odeint_adjoint if self.adjoint else odeint
        zs = solver(self.func, z, self.t, rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        return zs[-1]
