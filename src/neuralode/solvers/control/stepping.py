"""The step rules both clocks share, written once over either clock's arithmetic.

The scalar clock keeps its time and step as Python floats (one time for the whole batch); the
per-sample clock keeps ``(B,)`` float64 tensors, one entry per sample. A rule is written once,
against :class:`ClockOps`, and each clock passes its arithmetic: :class:`FloatOps` keeps the
scalar clock on host floats (no tensor is made for a time or a step), :class:`TensorOps` works on
the whole batch at once. So the two clocks cannot drift apart: the clipping rule, the landing
rule, the resolution of time and the floor of ``min_step`` are these functions, and
:func:`~neuralode.solvers.control.controller.initial_step` is written the same way.

The rules (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4; torchdiffeq 0.2.5 and scipy's
``solve_ivp`` clip the same way):

- a proposed step is held to ``[min_step, max_step]``;
- it is stretched by up to 10% (never past ``max_step``) to land on the next stop, an output time or
  a ``step_t``, rather than leave a sliver of a step after it, and shortened to land there when it would
  pass it;
- a step at or below ``4 eps |t|`` (``eps`` of float64, the clock's time) cannot move ``t``: where
  the stop is that close the clock arrives without a step, otherwise the step has underflowed;
- a rejected step is final when no smaller one may follow: it was taken at ``min_step``, or it was
  stretched to land on a stop that a step of ``min_step`` would land on too;
- an output time ``τ`` inside an accepted step ``[t, t1]`` of size ``h`` is read from the step's
  interpolant at ``θ = (τ - t) / h``, except that an output time equal to the step's end is the end state
  itself (``θ = 1``), so outputs at step ends are the solution's own states, not interpolated.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch

from ..grid import TIME_EPS

# A time or a step is a Python float on the scalar clock and a ``(B,)`` tensor per sample.
R = TypeVar("R", float, torch.Tensor)


class ClockOps(Protocol[R]):
    """The arithmetic the shared rules need on one clock's numbers (implemented by the classes
    :class:`FloatOps` and :class:`TensorOps` themselves). A condition is a bool on the scalar clock
    and a ``(B,)`` bool tensor per sample; ``&``, ``|`` and comparisons work on both."""

    def where(self, cond: Any, a: R | float, b: R | float) -> R: ...

    def maximum(self, a: R, b: R) -> R: ...

    def minimum(self, a: R, b: R) -> R: ...

    def floor(self, x: R, lo: float) -> R: ...

    def cap(self, x: R, hi: float) -> R: ...

    def abs(self, x: R) -> R: ...

    def euler(self, y0: torch.Tensor, f0: torch.Tensor, h: R) -> torch.Tensor: ...


class FloatOps:
    """The scalar clock's arithmetic: Python floats, torch for the state."""

    where = staticmethod(lambda cond, a, b: a if cond else b)
    maximum = staticmethod(max)
    minimum = staticmethod(min)
    floor = staticmethod(max)  # max(x, lo): a NaN x stays NaN, as with clamp
    cap = staticmethod(min)  # min(x, hi): likewise
    abs = staticmethod(abs)

    @staticmethod
    def euler(y0: torch.Tensor, f0: torch.Tensor, h: float) -> torch.Tensor:
        return torch.add(y0, f0, alpha=h)


class TensorOps:
    """The per-sample clock's arithmetic: ``(B,)`` float64 tensors, one entry per row of a ``(B, N)`` state."""

    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)
    floor = staticmethod(lambda x, lo: x.clamp(min=lo))
    cap = staticmethod(lambda x, hi: x.clamp(max=hi))
    abs = staticmethod(torch.abs)

    @staticmethod
    def where(cond: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
        # A def rather than ``staticmethod(torch.where)``: the stubs' overloads of ``torch.where``
        # would collapse to the first (one-argument) one.
        return torch.where(cond, a, b)

    @staticmethod
    def euler(y0: torch.Tensor, f0: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return y0 + h.to(y0.dtype)[:, None] * f0


def ops_for(x: object) -> ClockOps[Any]:
    """The arithmetic of the clock whose number ``x`` is: :class:`TensorOps` for a tensor, else :class:`FloatOps`."""
    return TensorOps if isinstance(x, torch.Tensor) else FloatOps


def plan_step(dt: R, t: R, t_stop: R, min_step: float, max_step: float) -> tuple[R, R, Any, Any]:
    """The step a clock at ``t`` takes towards ``t_stop`` when its controller proposes ``dt`` (module docstring).

    Returns ``(dt_abs, remaining, lands, below)``: the step's size ``|h|``; the distance from ``t`` to the stop;
    whether the step ends on the stop (then ``dt_abs == remaining``); whether ``dt_abs`` is at or below the
    resolution of time at ``t`` (a step that cannot move ``t``; 0 included). ``min_step <= max_step`` (the
    options check it). A float ``dt`` gives the scalar clock's plan in floats (a plain tuple: this runs once
    per attempt), a ``(B,)`` tensor one plan per sample; a NaN step stays NaN (each clock reports it).
    """
    ops = ops_for(dt)
    dt_abs = ops.floor(ops.cap(ops.abs(dt), max_step), min_step)
    remaining = ops.abs(t_stop - t)
    lands = ops.cap(1.1 * dt_abs, max_step) >= remaining
    dt_abs = ops.where(lands, remaining, dt_abs)
    return dt_abs, remaining, lands, dt_abs <= 4 * TIME_EPS * ops.abs(t)


def at_step_floor(dt_abs: R, remaining: R, min_step: float, max_step: float) -> Any:
    """Whether a step of ``dt_abs``, rejected, may not be retried smaller: it was taken at ``min_step``,
    or it was stretched to land on a stop ``remaining`` away that a step of ``min_step`` would land on
    too (its retry would be this very step). Only meaningful with ``min_step > 0``."""
    return (dt_abs <= min_step) | (min(1.1 * min_step, max_step) >= remaining)


def output_theta(tau: R, t: R, t1: R, h: R) -> R:
    """Where an output time ``tau`` lies in the accepted step ``[t, t1]`` of size ``h``: ``θ = (τ - t) / h``, and
    exactly 1 at the step's end (module docstring). Floats, or tensors that broadcast (the per-sample clock's
    ``(B, m)`` windows of output times against ``(B, 1)`` steps)."""
    return ops_for(tau).where(tau == t1, 1.0, (tau - t) / h)


def next_step_t(step_t_asc: torch.Tensor, t: torch.Tensor, t_end: torch.Tensor, sign: float) -> torch.Tensor:
    """Each sample's next stop: the first ``step_t`` after ``t_i`` and before ``t_end_i``, else ``t_end_i``.

    ``step_t_asc`` holds ``sign * step_t`` ascending. A ``step_t`` within ``8 eps |t_i|`` after
    ``t_i`` counts as reached (a step that short is below time's resolution), so a step to a
    ``step_t`` is never one of rounding size, and arriving within rounding of a stop happens only
    at ``t_end``. The host clock's rule otherwise: the step is clipped to the stop and stretched
    by up to 10% to land on it.
    """
    key = (t * sign + 8 * TIME_EPS * t.abs()).contiguous()
    k = torch.searchsorted(step_t_asc, key, right=True)  # (B,) first stop beyond t
    nxt = step_t_asc[k.clamp(max=len(step_t_asc) - 1)] * sign
    before = (k < len(step_t_asc)) & ((nxt - t_end) * sign < 0)
    return torch.where(before, nxt, t_end)
