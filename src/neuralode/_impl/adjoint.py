"""``torchdiffeq._impl.adjoint``: ``odeint_adjoint`` (neuralode's; see :func:`neuralode.odeint_adjoint`)."""

from __future__ import annotations

from ..solvers import odeint_adjoint

__all__ = ["odeint_adjoint"]
