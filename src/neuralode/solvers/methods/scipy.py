"""``scipy_solver``: scipy's ``solve_ivp`` as a method with a driver of its own."""

from __future__ import annotations

from ..solution import Solution
from .base import Capabilities, Method
from .scipy_solver import ScipyMethod, ScipyOptions, parse_scipy_options, scipy_solve


class Scipy(Method):
    """scipy's ``solve_ivp`` (``options['solver']``: LSODA, RK45, ...) on NumPy copies of the state: it takes
    its steps itself (``own_driver``), so it has no stepper, no interpolant, and gives no gradients by
    backpropagation (``odeint_adjoint`` works: the backward solve is another solve)."""

    tableau: ScipyMethod
    capabilities = Capabilities(adaptive=True, own_dense=False, events=False, checkpoint=False, own_driver=True)
    options_type = ScipyOptions

    def __init__(self, tableau: ScipyMethod):
        super().__init__(tableau)

    order = None  # scipy's solver chooses
    error_order = None

    def parse_options(self, options) -> ScipyOptions:
        return parse_scipy_options(options)

    def run(self, func, y0, t, times, rtol, atol, opts: ScipyOptions) -> Solution:
        """The whole solve by ``solve_ivp``; a :class:`~neuralode.solvers.solution.Solution`."""
        return scipy_solve(func, y0, t, times, rtol, atol, opts, self.name)
