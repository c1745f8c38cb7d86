"""Comparing two code paths that compute the same equations in a different order of summation.

Where two paths promise the same arithmetic (the same solve run twice, a resume that must be exact), the
tests compare with ``torch.equal``. Where they promise the same *equations* but sum in a different order —
a matrix-vector product (BLAS ``gemv``/``addmv``) in one path and a chain of scaled additions in the other —
the last bits depend on the CPU: the BLAS kernel picked at run time blocks its sums by the vector width
(AVX-512 on one x86 machine, AVX2 on another), so two machines of the same kind can disagree in the last
few ulps while each is deterministic on its own. Those tests use :func:`assert_equal_to_rounding`.
"""

from __future__ import annotations

import torch


def assert_equal_to_rounding(a: torch.Tensor, b: torch.Tensor, ulps: float = 64.0) -> None:
    """Assert ``|a - b| <= ulps * eps * max|b|`` elementwise, with ``eps`` the dtype's machine epsilon.

    The scale is the largest magnitude in ``b`` (the whole solution), not each element's own: a component
    that passes near zero inherits the absolute rounding of the sums it came from, which is relative to the
    terms summed, not to the result. ``ulps`` bounds how far a different summation order may carry the
    last bits; a real difference in the equations (a wrong coefficient, a missed stage) is many orders of
    magnitude larger.
    """
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    a, b = a.detach(), b.detach()
    eps = torch.finfo(b.dtype).eps
    scale = float(b.abs().max()) if b.numel() else 0.0
    bound = ulps * eps * max(scale, torch.finfo(b.dtype).tiny)
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    assert diff <= bound, (
        f"paths differ by {diff:.3g} = {diff / (eps * max(scale, 1e-300)):.1f} ulps of max|b| = {scale:.3g}; bound {ulps:g} ulps"
    )
