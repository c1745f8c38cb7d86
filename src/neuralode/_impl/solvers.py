"""``torchdiffeq._impl.solvers``: the base class older torchdiffeq kept here, and what is not here.

``RKAdaptiveStepsizeODESolver`` (declaring an explicit embedded method, see
:mod:`neuralode._impl.rk_common`) is importable from here as it was from torchdiffeq before 0.2.
torchdiffeq's other solver base classes run a method through a ``_step_func`` or ``integrate`` of
their own; neuralode's methods are data run by the library's solver loops, so importing them raises an
``ImportError`` that says what to use instead.
"""

from __future__ import annotations

from .rk_common import RKAdaptiveStepsizeODESolver

__all__ = ["RKAdaptiveStepsizeODESolver"]

# torchdiffeq's solver base classes without a counterpart here, and what to use instead.
_NOT_HERE = {
    "FixedGridODESolver": (
        "write the step as a neuralode.ButcherTableau (b_err=None for a fixed-step method) and register it with "
        "SOLVERS[name] = tableau, or use a built-in fixed-grid method (euler, midpoint, heun2, heun3, rk4, rk4_38, "
        "the implicit ones)"
    ),
    "AdaptiveStepsizeODESolver": "declare an explicit embedded method with RKAdaptiveStepsizeODESolver's attributes",
    "AdaptiveStepsizeEventODESolver": "events are neuralode.Event records passed to solve(..., events=[...])",
    "FixedGridFIRKODESolver": "the fixed-grid implicit methods are built in (implicit_euler ... trbdf2)",
    "FixedGridDIRKODESolver": "the fixed-grid implicit methods are built in (implicit_euler ... trbdf2)",
}


def __getattr__(name: str):
    if name in _NOT_HERE:
        raise ImportError(
            f"torchdiffeq's {name} has no counterpart in neuralode: its methods are data (Butcher tableaus) run by "
            f"one loop, not classes with their own step or integrate methods; {_NOT_HERE[name]}. "
            "See docs/how-to/migrate-from-torchdiffeq.md."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
