"""The numerical core: tableaus, the stepper, step-size control, dense output and the loop.

Imports torch only; knows nothing of layers, models, data, plotting or the CLI.
"""

from .adjoint import in_adjoint_backward, odeint_adjoint, solve_adjoint
from .errors import SolverError
from .odeint import AdaptiveOptions, FixedOptions, Solution, SolverStats, odeint, solve
from .tableau import METHODS, ButcherTableau, get_tableau

__all__ = [
    "METHODS",
    "AdaptiveOptions",
    "ButcherTableau",
    "FixedOptions",
    "Solution",
    "SolverError",
    "SolverStats",
    "get_tableau",
    "in_adjoint_backward",
    "odeint",
    "odeint_adjoint",
    "solve",
    "solve_adjoint",
]
