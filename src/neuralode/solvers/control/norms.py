"""Error norms: from an error estimate to the one number (per sample, on the per-sample clock) that
the step-size controller reads.

The error ratio of a step is ``norm(err / (atol + rtol max(|y0|, |y1|)))``: the step is accepted
when it is at most 1. The norms, for both clocks:

* RMS, the default: the root mean square of the scaled error, ``||x||_2 / sqrt(n)``; for a tuple
  state the largest RMS over its tensors, so that a small tensor is not drowned by a large one
  (torchdiffeq 0.2.5 makes the same choice). :func:`rms` is the plain one on a tensor.
* The adjoint's seminorm (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE"): the backward state
  is ``(y, a, *g_theta)`` (``(a, *g_theta)`` for the interpolating adjoint), and the parameter
  gradients ``g_theta`` are quadratures that feed nothing back, so only ``y`` and ``a`` steer the
  step: :func:`seminorm` and :func:`seminorm_a`, the largest RMS over the parts that are stepped.
  The per-sample adjoint gets the same seminorm as :class:`RMSNorm` over its ``(y, a)`` parts.
* A user's ``options["norm"]``, called as torchdiffeq 0.2.5 calls it: with the scaled error in
  the state's own structure (a tensor, or a tuple of tensors). On the scalar clock it returns one
  number; on the per-sample clock one per sample (:class:`UserNorm`).

Two clocks, two classes side by side: :class:`_ErrorNorm` returns Python floats for the joint
loop, whose controller decides in host floats; :class:`RMSNorm` (and :class:`UserNorm`) return
``(B,)`` float64 tensors, the norm of each sample's own row. The RMS is the same sum on both,
but a float32 tuple state's per-tensor RMS is scaled in float32 on the scalar clock and in
float64 on the per-sample one, so the two agree to rounding, not bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..methods.stepper import combined_error_ratio
from ..options import _type_name, error_dtype

if TYPE_CHECKING:
    from ..problem import _Problem


def inverse_sqrt_sizes(sizes) -> list[float]:
    """``1 / sqrt(n)`` for each part of ``n`` elements (1 for an empty part): the RMS's factors."""
    return [1.0 / math.sqrt(max(n, 1)) for n in sizes]


def rms(x: torch.Tensor) -> torch.Tensor:
    """The root mean square of all of ``x``'s elements, as a 0-dim tensor (0 for an empty ``x``)."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def seminorm(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The backsolve adjoint's seminorm: ``state = (y, a, *g_theta)``, only ``y`` and ``a`` steer the step."""
    return torch.maximum(rms(state[0]), rms(state[1]))


def seminorm_a(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The interpolating adjoint's seminorm: ``state = (a, *g_theta)``, only ``a`` steers the step."""
    return rms(state[0])


# --------------------------------------------------------------------------------------------
# The scalar clock.


def bad_norm_value(value: Any) -> Exception:
    """The error for an ``options['norm']`` whose value is not one number."""
    if isinstance(value, torch.Tensor):
        return ValueError(
            f"options['norm'] must return a scalar (one number); it returned a tensor of shape {tuple(value.shape)}. "
            "Reduce it, e.g. norm=lambda x: x.abs().max() or torch.linalg.vector_norm(x) / x.numel() ** 0.5."
        )
    return TypeError(
        f"options['norm'] must return a scalar tensor or a float; it returned {type(value).__name__}. "
        "E.g. norm=lambda x: x.abs().max()."
    )


_NULL = contextlib.nullcontext()


def _no_grad():
    """``torch.no_grad()``, or nothing when autograd is off already (most forward solves): the
    error norm runs once per step, and entering and leaving the context costs two calls."""
    return torch.no_grad() if torch.is_grad_enabled() else _NULL


class _ErrorNorm:
    """``norm(err / (atol + rtol * max(|y0|, |y1|)))`` as a Python float.

    The default norm is the root mean square (RMS); for tuple states, the largest RMS over the
    tensors, so a small tensor is not drowned by a large one (torchdiffeq's choice too).
    """

    def __init__(self, problem: _Problem, rtol, atol, norm: Callable | None):
        self.problem = problem
        self.rtol = rtol
        self.atol = atol
        self.user_norm = norm
        self.inv_sqrt_n = inverse_sqrt_sizes(problem.sizes)
        # Half-precision states: the error ratio is formed in float32 (see options.error_dtype).
        self.upcast = error_dtype(problem.dtype) if problem.dtype in (torch.float16, torch.bfloat16) else None
        self._held: tuple = ((None, None), (None, None))  # (state, atol + rtol |state|), newest first
        self._rtol_atol: tuple | None = None  # rtol and atol as _tol's operands, made on first use

    @staticmethod
    def _as_operand(value, like: torch.Tensor):
        """A float tolerance as a 0-dim tensor of ``like``'s dtype and device (a tensor tolerance
        as it is). The same numbers as the float: an elementwise operation rounds a Python
        float operand to the tensor's dtype first; but a float32 tensor times a Python float
        takes a scalar-wrapping path that costs two to three elementwise operations, and the
        tolerance is formed on every step."""
        if isinstance(value, torch.Tensor):
            return value
        return torch.tensor(value, dtype=like.dtype, device=like.device)

    def norm(self, x: torch.Tensor, every_component: bool = False) -> float:
        """The solve's norm of ``x`` (flat): the user's when given, unless ``every_component``, else RMS (the
        largest RMS over the tensors of a tuple state)."""
        if self.user_norm is not None and not every_component:
            value = self.user_norm(self.problem.unflatten(x))
            try:
                return float(value)
            except (TypeError, ValueError, RuntimeError):
                raise bad_norm_value(value) from None
        if not self.problem.is_tuple:
            return float(torch.linalg.vector_norm(x)) * self.inv_sqrt_n[0]
        rms = [torch.linalg.vector_norm(p) * s for p, s in zip(torch.split(x, self.problem.sizes), self.inv_sqrt_n)]
        return float(torch.stack(rms).max())

    def scaled(self, x: torch.Tensor, y: torch.Tensor, every_component: bool = False) -> float:
        """``norm(x / (atol + rtol |y|))``; the initial-step heuristic's three norms share ``y = y0``,
        whose tolerance is formed once (and reused by the first step's error ratio)."""
        with _no_grad():
            tol = self._tol(y)
            if self.upcast is not None:
                x = x.to(self.upcast)
            return self.norm(x / tol, every_component)

    def scaled_all(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """:meth:`scaled` in the default RMS norm over every component, whatever ``norm`` the solve was given:
        the measure of a Newton iteration, which must solve the stage equations of every component. A norm
        that leaves components out of the error estimate (the adjoint's seminorm, which leaves out the
        parameter-gradient quadratures) would let the iteration stop with those components unconverged
        (radau5's adjoint, rtol 1e-9: gradient error 1.9e-6, against 1e-11 with every component)."""
        return self.scaled(x, y, every_component=True)

    def scaled_stages(self, X: torch.Tensor, y: torch.Tensor) -> float:
        """``sqrt(mean_i scaled_all(X[i], y)^2)`` over the stages ``X`` stacked as ``(s, *state)``: the measure of
        a collocation method's Newton iteration. For a tensor state one norm of the stacked stages (the RMS
        over stages of RMS norms of equal size is the RMS of them all); for a tuple state stage by stage."""
        s = X.shape[0]
        if self.problem.is_tuple:
            return math.sqrt(sum(self.scaled_all(x, y) ** 2 for x in X.unbind(0)) / s)
        with _no_grad():
            tol = self._tol(y)
            if self.upcast is not None:
                X = X.to(self.upcast)
            return float(torch.linalg.vector_norm(X / tol)) * self.inv_sqrt_n[0] / math.sqrt(s)

    def _tol(self, y: torch.Tensor) -> torch.Tensor:
        """``atol + rtol |y|``, kept for the last two states seen: a step's ``y1`` is the next
        step's ``y0`` (and a rejected step retries from the same ``y0``), so each state's
        tolerance is formed once."""
        for held, tol in self._held:
            if held is y:
                return tol
        x = y if self.upcast is None else y.to(self.upcast)
        ax = x.abs()
        if self._rtol_atol is None:
            self._rtol_atol = tuple(self._as_operand(v, ax) for v in (self.rtol, self.atol))
        rtol, atol = self._rtol_atol
        tol = ax.mul_(rtol).add_(atol)
        self._held = ((y, tol), self._held[0])
        return tol

    def ratio(
        self, y_err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, y_err_aux: torch.Tensor | None = None
    ) -> float:
        """The error ratio of a step; with a second estimate (dopri8's E3), Hairer's combination
        of the two (:func:`~neuralode.solvers.methods.stepper.combined_error_ratio`).

        The scale ``atol + rtol max(|y0|, |y1|)`` is formed as ``max(atol + rtol |y0|, atol + rtol |y1|)``:
        rounding is monotone and ``rtol >= 0``, so the two are the same numbers, and the second
        reuses ``y0``'s tolerance from the step before (one elementwise operation fewer per step).
        """
        with _no_grad():
            tol0 = self._tol(y0)
            tol1 = self._tol(y1)
            scale = torch.maximum(tol0, tol1)
            if self.upcast is not None:
                y_err = y_err.to(self.upcast)
                y_err_aux = None if y_err_aux is None else y_err_aux.to(self.upcast)
            if y_err_aux is None:
                # Divided into the scale's own storage when the dtypes agree (complex states
                # have a real scale and a complex error).
                return self.norm(torch.div(y_err, scale, out=scale) if y_err.dtype == scale.dtype else y_err / scale)
            return combined_error_ratio(self.norm(y_err / scale), self.norm(y_err_aux / scale))


class _PrimalErrorNorm(_ErrorNorm):
    """:class:`_ErrorNorm` measured on the primal values of forward-mode dual tensors.

    The step sizes are Python floats: the discrete solution's derivative does not run through the
    controller's choices, in forward mode as in backpropagation. So the error measures need only the
    primal numbers, and measuring on them keeps the norm's in-place and ``out=`` kernels (which forward
    mode refuses) without carrying tangents through arithmetic whose result is thrown away.
    ``detach()`` drops the tangent of a ``torch.autograd.forward_ad`` dual tensor and of a tensor
    wrapped by a ``torch.func`` transform alike. Chosen once per solve by the caller when forward mode
    is active (:func:`~neuralode.solvers.api.forward_mode_active`); the plain solve keeps :class:`_ErrorNorm`.
    """

    def scaled(self, x: torch.Tensor, y: torch.Tensor, every_component: bool = False) -> float:
        return super().scaled(x.detach(), y.detach(), every_component)

    def scaled_stages(self, X: torch.Tensor, y: torch.Tensor) -> float:
        return super().scaled_stages(X.detach(), y.detach())

    def ratio(
        self, y_err: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, y_err_aux: torch.Tensor | None = None
    ) -> float:
        aux = None if y_err_aux is None else y_err_aux.detach()
        return super().ratio(y_err.detach(), y0.detach(), y1.detach(), aux)


# --------------------------------------------------------------------------------------------
# The per-sample clock.


class RMSNorm:
    """Per-sample error ratio: RMS over each sample's own elements (max over a tuple's tensors)."""

    def __init__(self, sizes: list[int], rtol, atol):
        self.sizes, self.rtol, self.atol = sizes, rtol, atol
        self.inv_sqrt_n = inverse_sqrt_sizes(sizes)

    def _select(self, tol, rows):
        return tol if (rows is None or not isinstance(tol, torch.Tensor)) else tol[rows]

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N) -> (B,)`` float64."""
        if len(self.sizes) == 1:
            n = torch.linalg.vector_norm(x, dim=1)
            return (n if n.dtype == torch.float64 else n.double()) * self.inv_sqrt_n[0]
        rms = [
            torch.linalg.vector_norm(p, dim=1).double() * s
            for p, s in zip(torch.split(x, self.sizes, dim=1), self.inv_sqrt_n)
        ]
        return torch.stack(rms).amax(0)

    def scaled(self, x: torch.Tensor, y: torch.Tensor, rows=None) -> torch.Tensor:
        with torch.no_grad():
            return self.norm(x / (y.abs() * self._select(self.rtol, rows) + self._select(self.atol, rows)))

    def ratio(self, y_err, y0, y1, y_err_aux=None, rows=None) -> torch.Tensor:
        with torch.no_grad():
            scale = torch.maximum(y0.abs(), y1.abs()) * self._select(self.rtol, rows) + self._select(self.atol, rows)
            if y_err_aux is None:
                return self.norm(y_err / scale)
            return combined_error_ratio(self.norm(y_err / scale), self.norm(y_err_aux / scale))


class UserNorm(RMSNorm):
    """A custom ``options["norm"]`` applied per sample.

    The contract: ``norm(x)`` receives the scaled error ``err / (atol + rtol max(|y0|, |y1|))`` in
    the state's structure with the batch first (a ``(B', ...)`` tensor, or a tuple of them, where
    ``B'`` is the current batch: ``B``, or fewer rows with ``per_sample="compact"``) and returns a
    real tensor of shape ``(B',)``: row ``i`` the norm of sample ``i``'s error, which alone decides
    that sample's step. Row ``i`` must depend on row ``i`` of ``x`` only.
    """

    def __init__(self, sizes, rtol, atol, user, unflatten):
        super().__init__(sizes, rtol, atol)
        self.user, self.unflatten = user, unflatten

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        out = self.user(self.unflatten(x))
        if not isinstance(out, torch.Tensor) or out.is_complex() or out.shape != (x.shape[0],):
            got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else _type_name(out)
            raise ValueError(
                f"options['norm'] with options['per_sample'] must return a real tensor of shape ({x.shape[0]},), "
                f"one norm per sample of its (batch-first) argument; got {got}. E.g. "
                "norm=lambda x: x.abs().flatten(1).amax(1)."
            )
        return out.detach().double()
