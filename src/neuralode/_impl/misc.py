"""``torchdiffeq._impl.misc``: ``Perturb``, the side a ``func`` with a ``perturb`` keyword is evaluated on.

The rest of torchdiffeq's ``misc`` (``_check_inputs``, ``_flat_to_shape``, ``_rms_norm``,
``_mixed_norm``, ...) is its internal machinery and has no counterpart here.
"""

from __future__ import annotations

from ..solvers import Perturb

__all__ = ["Perturb"]
