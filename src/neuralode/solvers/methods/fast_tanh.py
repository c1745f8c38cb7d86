"""A rational ``tanh`` for float32 inside neuralode's inductor graphs.

``tanh`` is the activation of most Neural ODE fields, and on the CPU it is their most expensive elementwise
operation: ATen's float32 ``tanh`` (SLEEF's vectorised ``tanh``, which inductor's generated C++ calls as well)
costs several times an ``exp`` of the same size. XLA, and so diffrax, evaluates a float32 ``tanh`` instead as a
clamped rational function of ``x`` (a few units in the last place from the correctly rounded value, at the cost of
a handful of multiply-adds and one division). ``benchmarks/bench_tanh.py`` measures both, and both accuracies
(``benchmarks/results/tanh.md``).

Inside the graphs that ``options={"compile": ...}`` compiles with inductor
(:func:`~neuralode.solvers.methods.compiled.compiled_fn`), ``aten.tanh`` on a float32 tensor is decomposed into

    tanh(x) ≈ x P(s) / Q(s),   s = (x / 9)²,   x clamped to [-9, 9], the value clamped to [-1, 1],

with ``P`` and ``Q`` of degree 4 in ``s`` and positive coefficients, so that Horner's rule evaluates both without
cancellation. ``x P(s)/Q(s)`` is odd and equals ``x`` to first order, so signed zeros, subnormal inputs and the
sign of every value are kept; beyond ``|x| = 9`` the float32 ``tanh`` is within one unit of ±1, which the
clamped value gives; ``±inf`` give ``±1`` and NaN stays NaN. The coefficients minimise the largest relative error
of ``P/Q`` against ``tanh(x)/x`` on ``[0, 9]`` in float64 (Lawson-weighted linearised least squares, refitted by
``benchmarks/bench_tanh.py``; about 2e-8 relative); rounding in float32 arithmetic brings the largest error to
under 7 units in the last place, which ``tests/test_fast_tanh.py`` checks over every float32 magnitude.

The derivative is untouched: autograd's ``tanh`` backward is ``grad (1 - tanh²)``, formed from the value above,
as in eager. Other dtypes (float64, half precision, complex) keep ATen's ``tanh``: the decomposition declines
them, so a float64 solve compiles to the same ``tanh`` as eager.
"""

from __future__ import annotations

import torch

CLAMP = 9.0
# P(s) and Q(s), lowest degree first (see the module docstring).
P = (1.0, 10.838647842407227, 22.9346866607666, 10.952598571777344, 0.5748722553253174)
Q = (1.0, 37.8386344909668, 169.7794647216797, 174.61346435546875, 33.475685119628906)


def _horner(coeffs: tuple[float, ...], s: torch.Tensor) -> torch.Tensor:
    out = s * coeffs[-1] + coeffs[-2]
    for c in coeffs[-3::-1]:
        out = out * s + c
    return out


def rational_tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` for a float32 tensor by the rational function of the module docstring."""
    xc = x.clamp(-CLAMP, CLAMP)
    s = (xc * (1.0 / CLAMP)).square()
    return (xc * _horner(P, s) / _horner(Q, s)).clamp(-1.0, 1.0)


def _tanh(x: torch.Tensor):
    """The decomposition of ``aten.tanh.default``: float32 only (``NotImplemented`` keeps ATen's)."""
    if x.dtype != torch.float32:
        return NotImplemented
    return rational_tanh(x)


def decompositions() -> dict:
    """``aten.tanh`` on float32 (:func:`rational_tanh`)."""
    return {torch.ops.aten.tanh.default: _tanh}
