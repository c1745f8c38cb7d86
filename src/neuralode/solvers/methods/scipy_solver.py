"""``method="scipy_solver"``: scipy's ``solve_ivp`` behind the same interface, forward only.

As in torchdiffeq, the state (any shape, or a tuple) is flattened, moved to the CPU as float64
NumPy, solved by ``solve_ivp(method=options["solver"])`` with the call's ``rtol``/``atol``, and
the states at ``t`` come back on the state's device and dtype. scipy's integrators are not
differentiable: when the call's inputs would carry gradients, the result carries a backward that
raises an error naming the methods that do, instead of silently returning no gradient (what
torchdiffeq does). ``odeint_adjoint`` with ``method="scipy_solver"`` works: its backward pass is
itself an ODE solve, which scipy can do.

Only this module imports scipy, and only when the method is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SolverError
from ..options import _check_state, _check_tolerance, _check_tolerance_pair, _positive, _type_name
from ..problem import _Problem
from ..solution import Solution, SolverStats

SCIPY_SOLVERS = ("LSODA", "RK45", "RK23", "DOP853", "Radau", "BDF")


@dataclass(frozen=True)
class ScipyMethod:
    """The ``scipy_solver`` pseudo-method as the set-up code sees it."""

    name: str = "scipy_solver"
    adaptive: bool = True  # rtol and atol apply
    description: str = "scipy.integrate.solve_ivp (options['solver']: " + ", ".join(SCIPY_SOLVERS) + "), forward only."


SCIPY_METHOD = ScipyMethod()


@dataclass(frozen=True)
class ScipyOptions:
    """Options of ``method="scipy_solver"``, as torchdiffeq spells them.

    Attributes:
        solver: scipy's method: one of ``LSODA`` (default), ``RK45``, ``RK23``, ``DOP853``,
            ``Radau``, ``BDF``.
        min_step, max_step: passed to ``solve_ivp`` (``min_step`` is used by LSODA only).
        first_step: passed to ``solve_ivp``; by default scipy chooses.
    """

    solver: str = "LSODA"
    min_step: float = 0.0
    max_step: float = math.inf
    first_step: float | None = None


def parse_scipy_options(options: Any) -> ScipyOptions:
    if options is None:
        return ScipyOptions()
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None; got {_type_name(options)}.")
    valid = ("solver", "min_step", "max_step", "first_step")
    for key in options:
        if key not in valid:
            raise ValueError(f"Unknown option {key!r} for method 'scipy_solver'. Valid options: {', '.join(valid)}.")
    o = dict(options)
    if o.get("solver", "LSODA") not in SCIPY_SOLVERS:
        raise ValueError(f"options['solver'] must be one of {', '.join(SCIPY_SOLVERS)}; got {o['solver']!r}.")
    if "min_step" in o:
        o["min_step"] = _positive("min_step", o["min_step"], allow_zero=True)
    if "max_step" in o:
        o["max_step"] = _positive("max_step", o["max_step"], allow_inf=True)
    if o.get("first_step") is not None:
        o["first_step"] = _positive("first_step", o["first_step"])
    return ScipyOptions(**o)


class _NoGradient(torch.autograd.Function):
    """Passes the scipy result through; its backward says that scipy gives no gradients."""

    @staticmethod
    def forward(ctx, ys: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return ys.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "method='scipy_solver' is forward only: scipy's solve_ivp cannot be differentiated. For gradients use "
            "another method of neuralode.METHODS (e.g. 'dopri5', or 'rodas5p' for a stiff problem; backpropagation), "
            "or odeint_adjoint, whose backward pass may itself use scipy_solver."
        )


def _tensors_of(func: Callable) -> list[torch.Tensor]:
    """The tensors ``func`` computes with, as far as can be seen: a module's parameters and
    buffers, or the tensors a function closes over (a lambda using a weight ``w``)."""
    if isinstance(func, torch.nn.Module):
        return [*func.parameters(), *func.buffers()]
    out = []
    for cell in getattr(func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, torch.nn.Module):
            out.extend(value.parameters())
    return out


def scipy_solve(
    func: Callable,
    y0,
    t: torch.Tensor,
    times: list[float],
    rtol,
    atol,
    opts: ScipyOptions,
    name: str,
) -> Solution:
    """Solve with ``scipy.integrate.solve_ivp`` and return a :class:`Solution`."""
    import numpy as np
    from scipy.integrate import solve_ivp

    is_tuple = isinstance(y0, tuple)
    parts = _check_state(y0)
    rtol = _check_tolerance("rtol", rtol, parts, is_tuple)
    atol = _check_tolerance("atol", atol, parts, is_tuple)
    _check_tolerance_pair(rtol, atol)
    stats = SolverStats()
    problem = _Problem(func, parts, is_tuple, stats)
    flat0 = problem.flatten(parts)
    shape = flat0.shape
    problem.first_call(times[0], flat0.detach())

    def as_numpy_tol(v):
        if isinstance(v, torch.Tensor):
            return v.detach().reshape(-1).to("cpu", torch.float64).numpy()
        return float(v)

    def rhs(s: float, x):
        y = torch.as_tensor(x, dtype=torch.float64).reshape(shape).to(flat0.device, flat0.dtype)
        with torch.no_grad():
            return problem(float(s), y).detach().reshape(-1).to("cpu", torch.float64).numpy()

    kwargs = dict(method=opts.solver, rtol=as_numpy_tol(rtol), atol=as_numpy_tol(atol), max_step=opts.max_step)
    if opts.solver == "LSODA":
        kwargs["min_step"] = opts.min_step
    if opts.first_step is not None:
        kwargs["first_step"] = opts.first_step
    if len(times) == 1:
        ys = flat0.detach().unsqueeze(0)
    else:
        y_np = flat0.detach().reshape(-1).to("cpu", torch.float64).numpy()
        res = solve_ivp(rhs, (times[0], times[-1]), y_np, t_eval=np.asarray(times), **kwargs)
        if not res.success:
            raise SolverError(
                f"scipy's {opts.solver} failed: {res.message}",
                float(res.t[-1]) if len(res.t) else times[0],
                math.nan,
                int(res.nfev),
                "Loosen rtol/atol or try another options['solver'].",
            )
        stats.nfe = int(res.nfev) + 1  # scipy reports no step counts
        ys = torch.as_tensor(res.y.T, dtype=torch.float64).to(flat0.device, flat0.dtype).reshape(len(times), *shape)
        ys[0] = flat0.detach()
    inputs = [x for x in (*parts, t, *_tensors_of(func)) if x.requires_grad]
    if torch.is_grad_enabled() and inputs:
        ys = _NoGradient.apply(ys, *inputs)
    ys_out: torch.Tensor | tuple[torch.Tensor, ...]  # the solution in the layout of y0
    if is_tuple:
        n = ys.shape[0]
        ys_out = tuple(c.reshape(n, *s) for c, s in zip(torch.split(ys, problem.sizes, dim=1), problem.shapes))
    else:
        ys_out = ys
    return Solution(t, ys_out, stats, name)
