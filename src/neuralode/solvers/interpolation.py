"""Dense output: the solution between the ends of an accepted step.

Three interpolants, chosen by the integration loop:

* ``linear``: ``y0 + theta (y1 - y0)``; what torchdiffeq's fixed-grid solvers use by default.
* ``hermite``: the cubic Hermite polynomial through ``(y0, f0)`` and ``(y1, f1)``; third-order
  accurate (local error O(dt^4)), used by every method without a continuous extension of its own.
* ``continuous_extension``: the method's own dense output ``y0 + dt sum_i b_i(theta) k_i`` with
  ``b_i(theta) = sum_j P_ij theta^(j+1)`` (dopri5: Hairer, Norsett, Wanner I, II.6; tsit5:
  Tsitouras 2011). It reuses the stages of the step, so it costs no function evaluation.

Here ``theta = (t - t0) / dt`` lies in ``[0, 1]``.
"""

from __future__ import annotations

import torch

from .stepper import combine


def linear(y0: torch.Tensor, y1: torch.Tensor, theta: float) -> torch.Tensor:
    """Linear interpolation between ``y0`` (theta = 0) and ``y1`` (theta = 1)."""
    return torch.add(y0, y1 - y0, alpha=theta)


def hermite(
    y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, dt: float, theta: float
) -> torch.Tensor:
    """Cubic Hermite interpolation from values and derivatives at both ends of a step.

    ``y(theta) = h00 y0 + h10 dt f0 + h01 y1 + h11 dt f1`` with the Hermite basis
    ``h00 = 2θ³ - 3θ² + 1``, ``h10 = θ³ - 2θ² + θ``, ``h01 = -2θ³ + 3θ²``, ``h11 = θ³ - θ²``.
    Written as ``y0 + h01 (y1 - y0) + dt (h10 f0 + h11 f1)`` so that it is exact on constants
    without rounding.
    """
    t2 = theta * theta
    t3 = t2 * theta
    h10 = t3 - 2.0 * t2 + theta
    h01 = -2.0 * t3 + 3.0 * t2
    h11 = t3 - t2
    out = torch.add(y0, y1 - y0, alpha=h01)
    out = torch.add(out, f0, alpha=h10 * dt)
    return torch.add(out, f1, alpha=h11 * dt)


def continuous_extension(
    y0: torch.Tensor, k: tuple[torch.Tensor, ...], dt: float, dense: tuple[tuple[float, ...], ...], theta: float
) -> torch.Tensor:
    """A Runge-Kutta method's own dense output ``y0 + dt sum_i b_i(theta) k_i``."""
    coeffs = []
    for i, row in enumerate(dense):
        # b_i(theta) = sum_j P_ij theta^(j+1), evaluated by Horner's rule.
        bi = 0.0
        for p in reversed(row):
            bi = (bi + p) * theta
        if bi != 0.0:
            coeffs.append((i, bi))
    return combine(y0, dt, coeffs, k)
